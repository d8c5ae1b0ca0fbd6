package jsonx

import (
	"strconv"
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
}

// BenchmarkAppendString is JSON string quoting of typical keys.
func BenchmarkAppendString(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendString(buf[:0], "temperature_sensor_7")
	}
}
