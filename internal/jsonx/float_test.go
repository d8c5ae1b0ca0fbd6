package jsonx

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// ThingsBoard stores a non-integral number as a double only when its scale
// is at most 16 (WIRE.md §2.4, §10.2); these tests pin AppendFloat to that.

// tenth and fifth are variables so that tenth+fifth is computed in float64
// (0.30000000000000004), not as the exact constant 0.3.
var tenth, fifth = 0.1, 0.2

func TestFloatScale(t *testing.T) {
	cases := []struct {
		name string
		v    float64
		bits int
		want string // "" when any output passing checkFloat will do
		// exact: the shortest form has a scale of at most 16, so the value
		// must come back unchanged.
		exact bool
	}{
		{"scale 15", 0.123456789012345, 64, "0.123456789012345", true},
		{"scale 16", 0.1234567890123456, 64, "0.1234567890123456", true},
		{"scale 16 below 0.1", 0.0123456789012345, 64, "0.0123456789012345", true},
		{"scale 17", 0.12345678901234566, 64, "0.1234567890123457", false},
		{"0.1+0.2", tenth + fifth, 64, "0.3", false},
		{"-(0.1+0.2)", -(tenth + fifth), 64, "-0.3", false},
		{"0.123456789012345678", 0.123456789012345678, 64, "0.1234567890123457", false},
		{"just below 0.1", 0.09999999999999999, 64, "0.1", false},
		{"scale 18 below 1e-6", 1.2345678901234567e-7, 64, "1.23456789e-07", false},
		{"short below 1e-6", 1e-7, 64, "1e-07", true},
		{"scale 16 below 1e-6", 1.234567e-10, 64, "1.234567e-10", true},
		{"1.5e-17", 1.5e-17, 64, "0.0", false},
		{"1e-17", 1e-17, 64, "0.0", false},
		{"-1e-20", -1e-20, 64, "-0.0", false},
		{"2.5e-300", 2.5e-300, 64, "0.0", false},
		{"5e-324", math.SmallestNonzeroFloat64, 64, "0.0", false},
		{"-5e-324", -math.SmallestNonzeroFloat64, 64, "-0.0", false},
		{"6e-17", 6e-17, 64, "1e-16", false},
		{"1e-16", 1e-16, 64, "1e-16", true},
		{"1.6e-16", 1.6e-16, 64, "2e-16", false},
		{"3.0", 3, 64, "3.0", true},
		{"-0.0", math.Copysign(0, -1), 64, "-0.0", true},
		{"1e21", 1e21, 64, "1000000000000000000000.0", true},
		{"1e300", 1e300, 64, "", true},
		{"MaxFloat64", math.MaxFloat64, 64, "", true},
		{"-MaxFloat64", -math.MaxFloat64, 64, "", true},
		{"2^53+2", 1<<53 + 2, 64, "9007199254740994.0", true},
		{"large fraction", 4503599627370495.5, 64, "4503599627370495.5", true},
		{"negative scale 17", -0.012345678901234567, 64, "-0.0123456789012346", false},
		{"float32 0.1", float64(float32(0.1)), 32, "0.1", true},
		{"float32 3", 3, 32, "3.0", true},
		{"float32 1.7e-9", float64(float32(1.7e-9)), 32, "1.7e-09", true},
		{"float32 1.2345678e-12", float64(float32(1.2345678e-12)), 32, "1.2346e-12", false},
		{"float32 -1.5e-17", float64(float32(-1.5e-17)), 32, "-0.0", false},
		{"float32 smallest", float64(math.SmallestNonzeroFloat32), 32, "0.0", false},
		{"float32 max", math.MaxFloat32, 32, "340282350000000000000000000000000000000.0", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := checkFloat(t, c.v, c.bits)
			if c.want != "" && s != c.want {
				t.Errorf("AppendFloat(%v, %d) = %q, want %q", c.v, c.bits, s, c.want)
			}
			back, _ := strconv.ParseFloat(s, c.bits)
			if exact := back == c.v; exact != c.exact {
				t.Errorf("AppendFloat(%v, %d) = %q: exact %v, want %v", c.v, c.bits, s, exact, c.exact)
			}
		})
	}
}

func TestTextScale(t *testing.T) {
	for s, want := range map[string][2]int{
		"0.30000000000000004": {17, 17}, "1.5e-17": {18, 18}, "0.3": {1, 1}, "3.0": {0, 1}, "-0.0": {0, 1},
		"1e-16": {16, 16}, "1.2e+3": {-2, -2}, "1000.0": {0, 1}, "1.50e-3": {4, 5}, "42": {0, 0},
	} {
		if sc, raw := textScale(s); sc != want[0] || raw != want[1] {
			t.Errorf("textScale(%q) = %d, %d; want %d, %d", s, sc, raw, want[0], want[1])
		}
	}
}

// TestFloatScaleSweep checks random floats of every magnitude from 1e-20
// to 1 (where the scale can exceed 16), as float64 and float32, with random
// mantissas and with few digits (where the fast path and short forms live).
func TestFloatScaleSweep(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 17))
	n := 200_000
	if testing.Short() {
		n = 20_000
	}
	for range n {
		v := math.Ldexp(1+rng.Float64(), -rng.IntN(70))
		if rng.IntN(4) == 0 {
			// A short decimal with a sub-ulp error, as 0.1+0.2 has.
			digits := math.Pow10(rng.IntN(18))
			v = math.Round(v*digits)/digits + v*1e-16*(rng.Float64()-0.5)
		}
		if rng.IntN(2) == 0 {
			v = -v
		}
		checkFloat(t, v, 64)
		checkFloat(t, float64(float32(v)), 32)
	}
}

// TestAppendFloatNoAlloc: every path, the rounding ones included, writes
// into the caller's buffer without allocating.
func TestAppendFloatNoAlloc(t *testing.T) {
	buf := make([]byte, 0, 512)
	for _, c := range []struct {
		v    float64
		bits int
	}{
		{21.5, 64}, {1.1100000000000001, 64}, {tenth + fifth, 64}, {1.2345678901234567e-7, 64}, {1.5e-17, 64},
		{6e-17, 64}, {1e-17, 64}, {math.SmallestNonzeroFloat64, 64}, {1e300, 64}, {math.MaxFloat64, 64},
		{float64(float32(1.2345678e-12)), 32}, {float64(float32(0.1)), 32},
	} {
		if n := testing.AllocsPerRun(100, func() { buf, _ = AppendFloat(buf[:0], c.v, c.bits) }); n != 0 {
			t.Errorf("AppendFloat(%v, %d) allocates %v times", c.v, c.bits, n)
		}
	}
}
