package jsonx

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkAppendFloat compares the float formatting the SDK needs (exact
// round trip, integral values keep ".0") with plain strconv.
func BenchmarkAppendFloat(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.Run("jsonx", func(b *testing.B) {
		b.ReportAllocs()
		f := 0.0
		for b.Loop() {
			buf, _ = AppendFloat(buf[:0], f*0.37, 64)
			f++
		}
	})
	b.Run("strconv", func(b *testing.B) {
		b.ReportAllocs()
		f := 0.0
		for b.Loop() {
			buf = strconv.AppendFloat(buf[:0], f*0.37, 'g', -1, 64)
			f++
		}
	})
	// Values below 0.5 whose shortest form has more than 16 decimals
	// (0.30000000000000004), which AppendFloat rounds to 16.
	rounded := roundedFloats()
	b.Run("jsonx-rounded", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			buf, _ = AppendFloat(buf[:0], rounded[i%len(rounded)], 64)
			i++
		}
	})
	b.Run("strconv-rounded", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			buf = strconv.AppendFloat(buf[:0], rounded[i%len(rounded)], 'g', -1, 64)
			i++
		}
	})
}

// roundedFloats returns 1024 floats between 0 and 0.5 whose shortest form
// has more than 16 decimals.
func roundedFloats() []float64 {
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([]float64, 0, 1024)
	for len(out) < cap(out) {
		v := rng.Float64() / 2
		s := strconv.FormatFloat(v, 'f', -1, 64)
		if _, frac, _ := strings.Cut(s, "."); len(frac) > 16 {
			out = append(out, v)
		}
	}
	return out
}

// BenchmarkAppendString is JSON string quoting of typical keys.
func BenchmarkAppendString(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendString(buf[:0], "temperature_sensor_7")
	}
}
