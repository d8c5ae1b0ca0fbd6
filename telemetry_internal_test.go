package tbgateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/internal/jsonx"
)

// The telemetry encoder: which values and keys it refuses and why, how
// Points are written, and floats.

func TestValueErrors(t *testing.T) {
	cases := []struct {
		name    string
		entries []Entry
		device  string
		want    error
		key     string
	}{
		{"nan", []Entry{{TS: 1, Values: Values{"t": math.NaN()}}}, "D", ErrInvalidValue, "t"},
		{"inf", []Entry{{TS: 1, Values: Values{"t": math.Inf(1)}}}, "D", ErrInvalidValue, "t"},
		{"nested-nan", []Entry{{TS: 1, Values: Values{"j": map[string]any{"x": math.NaN()}}}}, "D", ErrInvalidValue, "j"},
		{"nil", []Entry{{TS: 1, Values: Values{"t": nil}}}, "D", ErrInvalidValue, "t"},
		{"chan", []Entry{{TS: 1, Values: Values{"t": make(chan int)}}}, "D", ErrUnsupportedType, "t"},
		{"func", []Entry{{TS: 1, Values: Values{"t": func() {}}}}, "D", ErrUnsupportedType, "t"},
		{"complex", []Entry{{TS: 1, Values: Values{"t": complex(1, 2)}}}, "D", ErrUnsupportedType, "t"},
		{"bad-raw", []Entry{{TS: 1, Values: Values{"t": json.RawMessage(`{`)}}}, "D", ErrInvalidValue, "t"},
		{"bad-number", []Entry{{TS: 1, Values: Values{"t": json.Number("0x10")}}}, "D", ErrInvalidValue, "t"},
		{"empty-key", []Entry{{TS: 1, Values: Values{"": 1}}}, "D", ErrInvalidKey, ""},
		{"no-values", []Entry{{TS: 1}}, "D", ErrNoData, ""},
		{"no-entries", nil, "D", ErrNoData, ""},
		{"negative-ts", []Entry{{TS: -1, Values: Values{"t": 1}}}, "D", ErrInvalidValue, "ts"},
		{"flat-metadata", []Entry{{Values: Values{"metadata": 1}}}, "D", ErrInvalidKey, "metadata"},
		{"flat-values", []Entry{{Values: Values{"values": 1, "ts": 2}}}, "D", ErrInvalidKey, "values"},
		{"metadata-no-connector", []Entry{{TS: 1, Values: Values{"t": 1}, Metadata: &Metadata{ReceivedAt: ms(1)}}}, "D", ErrInvalidValue, "metadata"},
		{"empty-device", []Entry{{TS: 1, Values: Values{"t": 1}}}, "", ErrInvalidDeviceName, ""},
		{"key-not-utf8", []Entry{{TS: 1, Values: Values{"\xd6": 1, "\xb1": 2}}}, "D", ErrInvalidKey, "\ufffd"},
		{"point-key-not-utf8", []Entry{{TS: 1, Points: []Point{Int("ok", 1), Int("a\xff", 2)}}}, "D", ErrInvalidKey, "a\ufffd"},
		{"point-nan", []Entry{{TS: 1, Points: []Point{Float64("t", math.NaN())}}}, "D", ErrInvalidValue, "t"},
		{"point-inf", []Entry{{TS: 1, Points: []Point{Int("a", 1), Float64("t", math.Inf(-1))}}}, "D", ErrInvalidValue, "t"},
		{"point-any-nil", []Entry{{TS: 1, Points: []Point{Any("t", nil)}}}, "D", ErrInvalidValue, "t"},
		{"point-any-chan", []Entry{{TS: 1, Points: []Point{Any("t", make(chan int))}}}, "D", ErrUnsupportedType, "t"},
		{"point-zero", []Entry{{TS: 1, Points: []Point{{Key: "t"}}}}, "D", ErrInvalidValue, "t"},
		{"point-empty-key", []Entry{{TS: 1, Points: []Point{Int("", 1)}}}, "D", ErrInvalidKey, ""},
		{"point-twice", []Entry{{TS: 1, Points: []Point{Int("a", 1), Int("b", 1), Int("a", 2)}}}, "D", ErrInvalidKey, "a"},
		{"point-and-value", []Entry{{TS: 1, Values: Values{"a": 1}, Points: []Point{Int("a", 2)}}}, "D", ErrInvalidKey, "a"},
		{"point-flat-metadata", []Entry{{Points: []Point{Int("metadata", 1)}}}, "D", ErrInvalidKey, "metadata"},
		{"point-flat-values", []Entry{{Points: []Point{Int("ts", 2), Int("values", 1)}}}, "D", ErrInvalidKey, "values"},
		{"point-second-entry", []Entry{{TS: 1, Points: []Point{Int("a", 1)}}, {TS: 2, Points: []Point{String("a", "x"), Bool("a", true)}}}, "D", ErrInvalidKey, "a"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := encodeWith(func(e *encoder) error { return e.deviceTelemetry(c.device, c.entries) })
			require.ErrorIs(t, err, c.want)
			var ve *ValueError
			if errors.As(err, &ve) {
				assert.Equal(t, c.key, ve.Key)
				assert.Equal(t, c.device, ve.Device)
			}
		})
	}
	long := string(bytes.Repeat([]byte("x"), 256))
	assert.ErrorIs(t, checkDeviceName(long), ErrInvalidDeviceName)
	assert.NoError(t, checkDeviceName(long[:255]))
	assert.ErrorIs(t, checkDeviceName("Pump \xff"), ErrInvalidDeviceName)
}

// TestPoints pins how each kind of Point is written, and that Points after
// Values and in their own order make the same bytes as the same data in
// Values.
func TestPoints(t *testing.T) {
	enc := func(entries ...Entry) string {
		t.Helper()
		p, err := encodeWith(func(e *encoder) error { return e.deviceTelemetry("D", entries) })
		require.NoError(t, err)
		return p
	}
	got := enc(Entry{TS: 1, Points: []Point{
		Int("i", -3), Int64("j", math.MinInt64), Uint64("u", math.MaxUint64), Float64("f", 3), Float64("g", 0.1),
		Float64("h", 1e-7), Bool("y", true), Bool("n", false), String("s", "a\"b\u2028"), String("e", ""),
		Any("m", map[string]any{"x": []any{1, nil}}), Any("r", json.RawMessage(`{"k": 1}`)), Any("f32", float32(0.1)),
		String("ключ", "é"),
	}})
	assert.Equal(t, `{"D":[{"ts":1,"values":{"i":-3,"j":-9223372036854775808,"u":18446744073709551615,"f":3.0,"g":0.1,`+
		`"h":1e-07,"y":true,"n":false,"s":"a\"b\u2028","e":"","m":{"x":[1,null]},"r":{"k":1},"f32":0.1,"ключ":"é"}}]}`, got)

	// Values first, sorted; then Points in their order.
	assert.Equal(t, `{"D":[{"ts":5,"values":{"a":1,"b":2.5,"z":true,"c":"x"}}]}`,
		enc(Entry{TS: 5, Values: Values{"b": 2.5, "a": 1}, Points: []Point{Bool("z", true), String("c", "x")}}))
	// Without timestamp: the flat form, with metadata after the values.
	assert.Equal(t, `{"D":[{"t":1,"metadata":{"connector":"c","receivedTs":1,"publishedTs":2}}]}`,
		enc(Entry{Points: []Point{Int("t", 1)}, Metadata: &Metadata{Connector: "c", ReceivedAt: ms(1), PublishedAt: ms(2)}}))

	// In key order, Points make exactly the bytes of the same Values.
	for _, es := range [][]Entry{benchEntries(3, 5), benchEntries(1, 40)} {
		pts := make([]Entry, len(es))
		for i, en := range es {
			pts[i] = Entry{TS: en.TS}
			for _, k := range sortedNames(nil, en.Values) {
				pts[i].Points = append(pts[i].Points, Any(k, en.Values[k]))
			}
		}
		assert.Equal(t, enc(es...), enc(pts...))
	}
}

// TestPointKeyCache: one encoder reused across calls, as the pool reuses
// them, must not let the keys it checked before excuse new keys, nor a
// failed check leave anything behind.
func TestPointKeyCache(t *testing.T) {
	e := new(encoder)
	call := func(en Entry) error {
		e.buf, e.items = e.buf[:0], e.items[:0]
		_, err := e.deviceRecords(nil, "D", "", []Entry{en}, unlimited)
		return err
	}
	many := func(dup bool) []Point {
		ps := make([]Point, 40) // past the linear scan: a set
		for i := range ps {
			ps[i] = Int(fmt.Sprintf("k%d", i), i)
		}
		if dup {
			ps[30].Key = "k3"
		}
		return ps
	}
	ab := []Point{Int("a", 1), Int("b", 2)}
	require.NoError(t, call(Entry{TS: 1, Points: ab}))
	require.NoError(t, call(Entry{TS: 1, Points: ab}))
	require.ErrorIs(t, call(Entry{TS: 1, Points: []Point{Int("a", 1), Int("a", 2)}}), ErrInvalidKey)
	require.ErrorIs(t, call(Entry{TS: 1, Points: []Point{Int("b", 1), Int("", 2)}}), ErrInvalidKey)
	require.ErrorIs(t, call(Entry{TS: 1, Values: Values{"b": 0}, Points: ab}), ErrInvalidKey)
	require.ErrorIs(t, call(Entry{TS: 1, Points: many(true)}), ErrInvalidKey)
	require.NoError(t, call(Entry{TS: 1, Points: many(false)}), "the failed check left keys in its set")
	require.NoError(t, call(Entry{TS: 1, Points: many(false)}))
	require.NoError(t, call(Entry{TS: 1, Values: Values{"c": 0}, Points: ab}))
	require.NoError(t, call(Entry{TS: 1, Points: ab}))
	// Keys of the same length that differ must be quoted anew.
	require.NoError(t, call(Entry{TS: 1, Points: []Point{Int("x", 1), Int("y", 2)}}))
	assert.Equal(t, `{"ts":1,"values":{"x":1,"y":2}}`, string(e.buf))
}

func TestFloatFormatting(t *testing.T) {
	cases := map[float64]string{
		3: "3.0", -0.5: "-0.5", 1e20: "100000000000000000000.0", 1e21: "1000000000000000000000.0",
		0.1: "0.1", 1e-7: "1e-07", 123456.789: "123456.789",
		// Rounded to 16 decimals, so that ThingsBoard stores a double
		// (WIRE.md 10.2): below 0.5e-16 that is zero.
		0.1 + 0.2: "0.3", 2.5e-300: "0.0",
	}
	for f, want := range cases {
		b, err := jsonx.AppendFloat(nil, f, 64)
		require.NoError(t, err)
		assert.Equal(t, want, string(b))
		back, err := jsonx.Decode(b)
		require.NoError(t, err)
		assert.InDelta(t, f, back, 1e-16, "round trip of %s", b)
	}
	b, _ := jsonx.AppendFloat(nil, float64(float32(0.1)), 32)
	assert.Equal(t, "0.1", string(b))
	type celsius float64
	b, err := jsonx.AppendValue(nil, celsius(21), &jsonx.Scratch{})
	require.NoError(t, err)
	assert.Equal(t, "21.0", string(b), "named float types keep their decimal point")
}
