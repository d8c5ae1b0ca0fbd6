package jsonx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets for the codec behind every payload: what the server sends is
// decoded by Decode, what the SDK sends is built by AppendValue, AppendString
// and AppendFloat. The invariants are the package's promises: Decode accepts
// exactly one valid JSON document and keeps integers (int64) and floats
// (float64) apart, every decoded value re-encodes into JSON that decodes back
// to the same value and types (a float whose shortest form has more than 16
// decimals to the float nearest to it rounded to 16 decimals), strings
// survive encoding, every float is written with a decimal scale of at most
// 16 so that the server stores a double, and an integral float keeps its
// decimal point.

// jsonSeeds are documents worth starting from: the downlinks of WIRE.md §3
// and hostile inputs.
var jsonSeeds = []string{
	// Downlink vectors (testdata/vectors/downlink.json).
	`{"device":"Device A","data":{"attribute1":"value1","attribute2":42}}`,
	`{"device":"Dev","data":{"sharedStr":"value1","sharedBool":true,"sharedDbl":42.0,"sharedLong":73,"sharedJson":{"someNumber":42,"someArray":[1,2,3],"someNestedObject":{"key":"value"}}}}`,
	`{"device":"Dev","data":{"deleted":["sharedJson"]}}`,
	`{"id":1,"device":"Device A","value":"value1"}`,
	`{"id":2,"device":"Device A","values":{"attr1":"value1","attr2":true}}`,
	`{"device":"Device A","data":{"id":0,"method":"toggle_gpio","params":{"pin":1}}}`,
	`{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":"20:600"}}`,
	`{"client":{"a":1,"b":"x"},"shared":{"c":true}}`,
	// Scalars at top level.
	`0`, `-0`, `-0.0`, `1`, `1.0`, `1e2`, `1E+2`, `-1.5e-3`, `0.1`, `true`, `false`, `""`, `"x"`,
	// Integer bounds and beyond.
	`9223372036854775807`, `-9223372036854775808`, `9223372036854775808`, `-9223372036854775809`,
	`123456789012345678901234567890`, `4.9e-324`, `1.7976931348623157e308`,
	// Numbers outside float64's range.
	`1e400`, `-1e400`, `[1e309]`, `{"t":1e999}`, `1e-400`,
	// Java doubles as the server prints them.
	`42.0`, `1.0E20`, `1.0E-7`, `-0.0`,
	// Strings: escapes, unicode, invalid UTF-8, surrogates.
	`"\u0000\u001f\"\\\/\b\f\n\r\t"`, `"\u2028\u2029"`, `"\ud83d\ude00"`, `"\ud800"`, `"\udc00x"`,
	"\"\xff\xfe\"", "\"\xed\xa0\x80\"", `"日本語 ☃ 𝄞"`, "{\"\xff\":1}",
	// Structures.
	`{}`, `[]`, `[[]]`, `{"a":{}}`, `[null]`, `{"a":null}`, `{"a":[null,{"b":null}]}`, `null`,
	`{"a":1,"a":"2"}`, `{"a":{"b":1},"a":[1]}`, `[1,1.0,"1",true,null,{},[]]`,
	// Whitespace around the document.
	" \t\r\n{\"a\":1} \n", "\n1\n",
	// Malformed.
	``, ` `, `{`, `}`, `[`, `]`, `{"a"}`, `{"a":}`, `{"a":1,}`, `[1,]`, `01`, `1.`, `.1`, `+1`, `1e`, `--1`,
	`NaN`, `Infinity`, `-Infinity`, `{'a':1}`, `{a:1}`, `"unterminated`, `"\x"`, `"\u12"`, "\"\x01\"",
	`tru`, `nul`, `// comment`, `/* c */ 1`,
	// Trailing data after a complete document.
	`{} {}`, `{}{}`, `1 2`, `[] 1`, `{}x`, `{} }`, `[]]`, `{"a":1}}`, `"s" x`, `true false`, `null,`,
	// Deep nesting, within and beyond encoding/json's limit of 10000.
	strings.Repeat("[", 100) + strings.Repeat("]", 100),
	strings.Repeat(`{"a":`, 200) + "1" + strings.Repeat("}", 200),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
}

func FuzzJSONDecode(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Decode(data)
		valid := json.Valid(data)
		if err != nil {
			if v != nil {
				t.Fatalf("Decode(%q) returned %#v with error %v", data, v, err)
			}
			if valid {
				// The only valid JSON that may be refused holds a number
				// float64 cannot represent.
				ref, rerr := stdDecode(data)
				if rerr != nil || !hasHugeNumber(ref) {
					t.Fatalf("Decode refused valid JSON %q: %v", data, err)
				}
			}
			return
		}
		if !valid {
			t.Fatalf("Decode accepted invalid JSON (json.Valid refuses it) %q as %#v", data, v)
		}
		if _, err := DecodeObject(data); (err == nil) != isObject(v) {
			t.Fatalf("DecodeObject(%q) error %v disagrees with Decode's %T", data, err, v)
		}
		ref, err := stdDecode(data)
		if err != nil {
			t.Fatalf("encoding/json refuses what Decode accepted, %q: %v", data, err)
		}
		checkTypes(t, "$", ref, v)

		var s Scratch
		out, err := AppendValue(nil, v, &s)
		if v == nil {
			if !errors.Is(err, ErrNil) {
				t.Fatalf("AppendValue(nil) = %q, %v; want ErrNil", out, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("decoded %q but cannot re-encode %#v: %v", data, v, err)
		}
		if !json.Valid(out) {
			t.Fatalf("re-encoding %q gave invalid JSON %q", data, out)
		}
		back, err := Decode(out)
		if err != nil {
			t.Fatalf("re-encoded %q as %q, which does not decode: %v", data, out, err)
		}
		// Floats come back as AppendFloat keeps them: exactly, unless
		// their shortest form has more than 16 decimals.
		if want := stored(v); !reflect.DeepEqual(want, back) {
			t.Fatalf("round trip changed the value:\ninput   %q\nfirst   %#v\nencoded %q\nsecond  %#v\nwant    %#v", data, v, out, back, want)
		}
		// Encoding is canonical: the value read back gives the same bytes.
		again, err := AppendValue([]byte("prefix"), back, &s)
		if err != nil || string(again) != "prefix"+string(out) {
			t.Fatalf("second encoding differs: %q vs %q (%v)", again, out, err)
		}
		if s.used != 0 {
			t.Fatalf("Scratch leaked %d key slices", s.used)
		}
	})
}

func isObject(v any) bool { _, ok := v.(map[string]any); return ok }

// stored is v with every float replaced by what AppendFloat makes of it.
func stored(v any) any {
	switch x := v.(type) {
	case float64:
		b, err := AppendFloat(nil, x, 64)
		if err != nil {
			return x
		}
		f, _ := strconv.ParseFloat(string(b), 64)
		return f
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = stored(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = stored(e)
		}
		return a
	}
	return v
}

// stdDecode is the reference decoder: encoding/json with json.Number leaves.
func stdDecode(data []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

func hasHugeNumber(v any) bool {
	switch x := v.(type) {
	case json.Number:
		_, err := strconv.ParseFloat(string(x), 64)
		return err != nil
	case map[string]any:
		for _, e := range x {
			if hasHugeNumber(e) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if hasHugeNumber(e) {
				return true
			}
		}
	}
	return false
}

// checkTypes walks the reference tree and the decoded one together: an
// integer literal that fits must be int64, every other number float64 with
// the value strconv gives, or json.Number when float64 cannot hold it;
// never a string or anything else.
func checkTypes(t *testing.T, path string, ref, got any) {
	t.Helper()
	switch r := ref.(type) {
	case json.Number:
		lit := string(r)
		if !strings.ContainsAny(lit, ".eE") {
			if i, err := strconv.ParseInt(lit, 10, 64); err == nil {
				if g, ok := got.(int64); !ok || g != i {
					t.Fatalf("%s: integer literal %s decoded as %T %v, want int64", path, lit, got, got)
				}
				return
			}
		}
		f, err := strconv.ParseFloat(lit, 64)
		if err != nil {
			// Beyond float64's range: kept as the literal, so that it is
			// neither lost nor turned into a string.
			if g, ok := got.(json.Number); !ok || g != r {
				t.Fatalf("%s: number literal %s beyond float64 decoded as %T %#v, want json.Number", path, lit, got, got)
			}
			return
		}
		g, ok := got.(float64)
		if !ok {
			t.Fatalf("%s: number literal %s decoded as %T %#v, want float64", path, lit, got, got)
		}
		if math.Float64bits(g) != math.Float64bits(f) {
			t.Fatalf("%s: number literal %s decoded as %v, want %v", path, lit, g, f)
		}
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(r) {
			t.Fatalf("%s: object decoded as %T %#v", path, got, got)
		}
		for k, e := range r {
			ge, ok := g[k]
			if !ok {
				t.Fatalf("%s: member %q lost", path, k)
			}
			checkTypes(t, path+"."+k, e, ge)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(r) {
			t.Fatalf("%s: array decoded as %T %#v", path, got, got)
		}
		for i := range r {
			checkTypes(t, fmt.Sprintf("%s[%d]", path, i), r[i], g[i])
		}
	default: // string, bool, nil
		if !reflect.DeepEqual(ref, got) {
			t.Fatalf("%s: decoded %T %#v, want %T %#v", path, got, got, ref, ref)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{
		"", "value1", "Device A", `"quoted"`, `back\slash`, "\x00\x01\x1f\x7f", "\n\r\t\b\f",
		"\u2028\u2029", "<script>&</script>", "日本語 ☃ 𝄞 😀", "\xff", "a\xffb", "\xed\xa0\x80",
		"\xf4\x90\x80\x80", "\xc0\xaf", "\ufffd", "\xe2\x80", "\xe2\x80\xa8", strings.Repeat("\\\"", 100),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := AppendString([]byte("pre"), s)
		if !bytes.HasPrefix(out, []byte("pre")) {
			t.Fatalf("AppendString dropped the destination prefix: %q", out)
		}
		out = out[3:]
		if !json.Valid(out) {
			t.Fatalf("AppendString(%q) = %q, not valid JSON", s, out)
		}
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("AppendString(%q) = %q does not decode to a string: %v", s, out, err)
		}
		if utf8.ValidString(s) {
			if got != s {
				t.Fatalf("AppendString(%q) = %q decodes to %q", s, out, got)
			}
		} else {
			// Invalid bytes become U+FFFD one by one, as encoding/json does.
			std, _ := json.Marshal(s)
			var want string
			_ = json.Unmarshal(std, &want)
			if got != want {
				t.Fatalf("AppendString(%q) = %q decodes to %q, encoding/json gives %q", s, out, got, want)
			}
		}
		for _, c := range out {
			if c < 0x20 {
				t.Fatalf("AppendString(%q) = %q holds a raw control byte", s, out)
			}
		}
		if !utf8.Valid(out) || bytes.ContainsRune(out, '\u2028') || bytes.ContainsRune(out, '\u2029') {
			t.Fatalf("AppendString(%q) = %q: invalid UTF-8 or raw U+2028/U+2029", s, out)
		}
		// Decode sees the same string.
		v, err := Decode(out)
		if err != nil || v != got {
			t.Fatalf("Decode(%q) = %#v, %v; want %q", out, v, err, got)
		}
	})
}

func FuzzAppendFloat(f *testing.F) {
	for _, v := range []float64{
		0, math.Copysign(0, -1), 1, -1, 3, 42, 0.1, 0.5, 1.5, -2.25, 1e6, 1e15, 1e20, 1e21, 1e22, 1e100,
		1e300, 1e-5, 1e-6, 1e-7, 9.999999e-7, 123456789.125, 1 << 53, 1<<53 + 2, 1 << 63, 1 << 64,
		math.MaxFloat64, -math.MaxFloat64, math.SmallestNonzeroFloat64, 2.2250738585072014e-308,
		math.MaxFloat32, math.Pi, -math.E, math.NaN(), math.Inf(1), math.Inf(-1),
		// Shortest forms over 16 decimals, rounded.
		0.30000000000000004, -0.30000000000000004, 0.12345678901234568, 1.5e-17, 1e-17, 5e-17, 6e-17, 1e-16, 9.5e-17,
		0.09999999999999999, 1.2345678901234567e-7, 2.5e-300, -1e-20, 1.7e-9,
	} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			out, err := AppendFloat([]byte("x"), v, 64)
			if !errors.Is(err, ErrNonFinite) || string(out) != "x" {
				t.Fatalf("AppendFloat(%v) = %q, %v; want ErrNonFinite and nothing appended", v, out, err)
			}
			return
		}
		checkFloat(t, v, 64)
		if f32 := float32(v); !math.IsInf(float64(f32), 0) {
			checkFloat(t, float64(f32), 32)
		}
	})
}

// checkFloat checks AppendFloat's promises for v and returns what it wrote:
// valid JSON that the server types as a double (scale at most MaxScale, an
// integral value with a '.' and no exponent, never an integer literal);
// exactly v when its shortest form has a scale of at most MaxScale, else the
// float nearest to v rounded to MaxScale decimals, within the documented
// error; and canonical (the value read back is written the same way).
func checkFloat(t *testing.T, v float64, bits int) string {
	t.Helper()
	out, err := AppendFloat([]byte("x"), v, bits)
	if err != nil {
		t.Fatalf("AppendFloat(%v, %d): %v", v, bits, err)
	}
	if len(out) < 2 || out[0] != 'x' {
		t.Fatalf("AppendFloat(%v, %d) = %q: destination prefix lost", v, bits, out)
	}
	s := string(out[1:])
	back, err := strconv.ParseFloat(s, bits)
	if err != nil {
		t.Fatalf("AppendFloat(%v, %d) = %q does not parse: %v", v, bits, s, err)
	}
	if !json.Valid([]byte(s)) {
		t.Fatalf("AppendFloat(%v, %d) = %q is not a JSON number", v, bits, s)
	}
	if sc, raw := textScale(s); sc > MaxScale || raw > MaxScale {
		t.Fatalf("AppendFloat(%v, %d) = %q has scale %d (%d as written), over %d: the server stores a string", v, bits, s, sc, raw, MaxScale)
	}
	shortest := strconv.FormatFloat(v, 'g', -1, bits)
	if sc, _ := textScale(shortest); sc <= MaxScale {
		// Nothing to round: exactly v, in its shortest form.
		if math.Float64bits(back) != math.Float64bits(v) {
			t.Fatalf("AppendFloat(%v, %d) = %q parses back as %v", v, bits, s, back)
		}
		if a := math.Abs(v); v != math.Trunc(v) && a >= 1e-6 && a < 1e21 {
			// The shortest digits, as strconv writes them (the fast path
			// for short decimals must agree).
			if want := strconv.FormatFloat(v, 'f', -1, bits); s != want {
				t.Fatalf("AppendFloat(%v, %d) = %q, want the shortest form %q", v, bits, s, want)
			}
		}
	} else {
		// Rounded: the float nearest to v rounded to 16 decimals...
		want, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', MaxScale, bits), bits)
		if math.Float64bits(back) != math.Float64bits(want) {
			t.Fatalf("AppendFloat(%v, %d) = %q reads as %v, want %v (%v rounded to %d decimals)", v, bits, s, back, want, v, MaxScale)
		}
		// ...within the documented error.
		if e := floatError(back, v); e.Cmp(maxRoundError(bits)) > 0 {
			t.Fatalf("AppendFloat(%v, %d) = %q is %s away, over the documented %s", v, bits, s, e.FloatString(20), maxRoundError(bits).FloatString(20))
		}
		// ...which itself needs no rounding, so that the check below makes
		// s its shortest form.
		if sc, _ := textScale(strconv.FormatFloat(back, 'g', -1, bits)); sc > MaxScale {
			t.Fatalf("AppendFloat(%v, %d) = %q reads as %v, whose shortest form has scale %d", v, bits, s, back, sc)
		}
	}
	if math.Abs(back-v) > 1e-16 {
		t.Fatalf("AppendFloat(%v, %d) = %q: error %g over 1e-16", v, bits, s, math.Abs(back-v))
	}
	if back == math.Trunc(back) && (!strings.Contains(s, ".") || strings.ContainsAny(s, "eE")) {
		t.Fatalf("AppendFloat(%v, %d) = %q: an integral float needs a '.' and no exponent, or the server stores a long", v, bits, s)
	}
	if !strings.ContainsAny(s, ".eE") {
		t.Fatalf("AppendFloat(%v, %d) = %q reads as an integer", v, bits, s)
	}
	// Canonical: what the server stores is written the same way again.
	if again, _ := AppendFloat(nil, back, bits); string(again) != s {
		t.Fatalf("AppendFloat(%v, %d) = %q, but the value it reads as gives %q", v, bits, s, again)
	}
	if bits == 64 {
		d, err := Decode([]byte(s))
		if g, ok := d.(float64); err != nil || !ok || math.Float64bits(g) != math.Float64bits(back) {
			t.Fatalf("Decode(%q) = %T %v, %v; want float64 %v", s, d, d, err, back)
		}
	}
	return s
}

// textScale returns the BigDecimal scale of the number literal s: digits
// after the point minus the exponent, once trailing zeros of the fraction
// are stripped (as BigDecimal.stripTrailingZeros does for a non-integral
// number; zeros before the point are kept, so 1000.0 has scale 0, not -3),
// and raw, the same without stripping (BigDecimal.scale of the text as
// written, which JsonConverter compares with 16). Zero has scale 0.
func textScale(s string) (scale, raw int) {
	s = strings.TrimPrefix(s, "-")
	exp := 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil {
			panic("textScale: bad exponent in " + s)
		}
		exp = e
		s = s[:i]
	}
	_, frac, _ := strings.Cut(s, ".")
	raw = len(frac) - exp
	frac = strings.TrimRight(frac, "0")
	if strings.Trim(s, "0.") == "" {
		return 0, raw
	}
	return len(frac) - exp, raw
}

// floatError is |a-b| exactly.
func floatError(a, b float64) *big.Rat {
	d := new(big.Rat).Sub(new(big.Rat).SetFloat64(a), new(big.Rat).SetFloat64(b))
	return d.Abs(d)
}

// maxRoundError is the error AppendFloat documents for a rounded value:
// under 8×10⁻¹⁷ for float64 (0.5×10⁻¹⁶ plus half an ulp of a value below
// 0.5), at most 10⁻¹⁶ for float32.
func maxRoundError(bits int) *big.Rat {
	if bits == 32 {
		return big.NewRat(1, 1e16)
	}
	return big.NewRat(8, 1e17)
}

// TestShortFloatsMatchStrconv sweeps the decimals the fast path writes
// (up to six places, below 10⁹): each must be strconv's shortest form.
func TestShortFloatsMatchStrconv(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for i := 0; i < 300_000; i++ {
		places := rng.IntN(7)
		n := rng.Int64N(2_000_000_000_000_000) - 1_000_000_000_000_000
		v := float64(n/int64(math.Pow10(9-places))) / math.Pow10(places)
		if v == math.Trunc(v) || math.Abs(v) >= 1e9 {
			continue
		}
		got, err := AppendFloat(nil, v, 64)
		if err != nil {
			t.Fatal(err)
		}
		if want := strconv.FormatFloat(v, 'f', -1, 64); string(got) != want {
			t.Fatalf("AppendFloat(%v) = %q, want %q", v, got, want)
		}
	}
}
