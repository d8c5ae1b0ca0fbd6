package tbgateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/outbox"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

type vector struct {
	Name    string `json:"name"`
	Topic   string `json:"topic"`
	Payload string `json:"payload"`
	Exact   bool   `json:"exact"`
	Expect  string `json:"expect"`
}

func loadVectors(t *testing.T, file string) map[string]vector {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "vectors", file))
	require.NoError(t, err)
	var list []vector
	require.NoError(t, json.Unmarshal(raw, &list))
	out := make(map[string]vector, len(list))
	for _, v := range list {
		out[v.Name] = v
	}
	return out
}

// TestVectorsMatchShared keeps testdata/vectors identical to the project's
// shared spec vectors when they are beside the checkout.
func TestVectorsMatchShared(t *testing.T) {
	shared, _ := filepath.Glob(filepath.Join("..", "shared", "vectors", "*.json"))
	for _, f := range shared {
		want, err := os.ReadFile(f)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join("testdata", "vectors", filepath.Base(f)))
		require.NoError(t, err, "copy %s into testdata/vectors", f)
		assert.Equal(t, string(want), string(got), "testdata/vectors/%s is stale", filepath.Base(f))
	}
	t.Logf("compared %d shared vector files", len(shared))
}

// sameJSON compares two payloads as JSON trees in which integers and
// floats are different types, as ThingsBoard sees them.
func sameJSON(t *testing.T, want, got string, msgAndArgs ...any) {
	t.Helper()
	w, err := jsonx.Decode([]byte(want))
	require.NoError(t, err, "want %s", want)
	g, err := jsonx.Decode([]byte(got))
	require.NoError(t, err, "got %s", got)
	assert.Equal(t, w, g, msgAndArgs...)
}

func ms(v int64) time.Time { return time.UnixMilli(v) }

func encodeWith(f func(e *encoder) error) (string, error) {
	e := getEncoder()
	defer e.release()
	err := f(e)
	return string(e.payload()), err
}

var allTypes = Values{
	"key1": "value1", "key2": true, "key3": 3.0, "key4": 4,
	"key5": map[string]any{"someNumber": 42, "someArray": []any{1, 2, 3}, "someNestedObject": map[string]any{"key": "value"}},
}

// uplinkOps produces each uplink vector's message from the SDK's encoders,
// with the vector's request ids.
var uplinkOps = map[string]func() (string, string, error){
	"connect-default-profile": func() (string, string, error) {
		return topicGatewayConnect, string(encodeConnect("Device A", "")), nil
	},
	"connect-with-profile": func() (string, string, error) {
		return topicGatewayConnect, string(encodeConnect("Device A", "Sensor A")), nil
	},
	"disconnect": func() (string, string, error) {
		return topicGatewayDisconnect, `{"device":"Device A"}`, nil // checked through the public API in the wire tests
	},
	"attributes-two-devices": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error {
			v := Values{"attribute1": "value1", "attribute2": 42}
			return e.gatewayAttributes(Attributes{"Device A": v, "Device B": v})
		})
		return topicGatewayAttributes, p, err
	},
	"attributes-doc-example": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error {
			return e.gatewayAttributes(Attributes{"Device A": {"fw_version": "1.0", "battery": 87}})
		})
		return topicGatewayAttributes, p, err
	},
	"telemetry-two-devices": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error {
			return e.gatewayTelemetry(Telemetry{
				"Device A": {
					At(ms(1483228800000), Values{"temperature": 42, "humidity": 80}),
					At(ms(1483228801000), Values{"temperature": 43, "humidity": 82}),
				},
				"Device B": {At(ms(1483228800000), Values{"temperature": 42, "humidity": 80})},
			})
		})
		return topicGatewayTelemetry, p, err
	},
	"telemetry-doc-example": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error {
			return e.deviceTelemetry("Device A", []Entry{{TS: 1700000000000, Values: Values{"temperature": 23.5, "humidity": 61}}})
		})
		return topicGatewayTelemetry, p, err
	},
	"telemetry-all-value-types": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error {
			return e.deviceTelemetry("Device A", []Entry{{TS: 10000, Values: allTypes}, {TS: 20000, Values: allTypes}})
		})
		return topicGatewayTelemetry, p, err
	},
	"telemetry-with-metadata": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error {
			return e.deviceTelemetry("Device A", []Entry{{TS: 1700000000000, Values: Values{"temperature": 21},
				Metadata: &Metadata{Connector: "modbus", ReceivedAt: ms(1700000000000), PublishedAt: ms(1700000000005)}}})
		})
		return topicGatewayTelemetry, p, err
	},
	"attribute-request-client-one-key": func() (string, string, error) {
		return topicGatewayAttrRequest, string(encodeAttrRequest(1, "Device A", true, []string{"attr1"})), nil
	},
	"attribute-request-shared-keys": func() (string, string, error) {
		return topicGatewayAttrRequest, string(encodeAttrRequest(2, "Device A", false, []string{"key3", "key4"})), nil
	},
	"rpc-reply": func() (string, string, error) {
		topic, p := encodeRPCReply(&RPCRequest{Device: "Device A", ID: 0, Method: "m"}, nil, nil)
		return topic, string(p), nil
	},
	"claim-two-devices": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error {
			return e.claims(map[string]ClaimRequest{
				"Device A": {SecretKey: "value_A", Duration: time.Minute},
				"Device B": {SecretKey: "value_B", Duration: time.Minute},
			})
		})
		return topicGatewayClaim, p, err
	},
	"claim-defaults": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error { return e.claims(map[string]ClaimRequest{"Device A": {}}) })
		return topicGatewayClaim, p, err
	},
	"self-telemetry": func() (string, string, error) {
		p, err := encodeWith(func(e *encoder) error { return e.selfTelemetry([]Entry{{Values: Values{"cpu": 12.5}}}) })
		return topicSelfTelemetry, p, err
	},
	"self-attribute-request": func() (string, string, error) {
		return topicSelfAttrRequestPrefix + "7", string(encodeSelfAttrRequest(AttributeKeys{Client: []string{"a", "b"}, Shared: []string{"c"}})), nil
	},
	"self-session-limits": func() (string, string, error) {
		p, err := encodeCall("getSessionLimits", nil)
		return topicSelfRPCRequestPrefix + "1", string(p), err
	},
}

func TestUplinkVectors(t *testing.T) {
	vectors := loadVectors(t, "uplink.json")
	require.Len(t, uplinkOps, len(vectors), "every uplink vector needs an op")
	for name, v := range vectors {
		t.Run(name, func(t *testing.T) {
			op, ok := uplinkOps[name]
			require.True(t, ok, "no op for vector %s", name)
			topic, payload, err := op()
			require.NoError(t, err)
			assert.Equal(t, v.Topic, topic)
			if v.Exact {
				assert.Equal(t, v.Payload, payload)
			}
			sameJSON(t, v.Payload, payload)
		})
	}
}

// TestGolden pins the exact bytes of every encoder: sorted keys, compact
// JSON, floats with a decimal point. Run with -update to rewrite.
func TestGolden(t *testing.T) {
	type out struct {
		Topic   string `json:"topic"`
		Payload string `json:"payload"`
	}
	got := map[string]out{}
	for name, op := range uplinkOps {
		topic, payload, err := op()
		require.NoError(t, err)
		got[name] = out{topic, payload}
	}
	extra := map[string]func(e *encoder) error{
		"telemetry-flat-with-metadata": func(e *encoder) error {
			return e.deviceTelemetry("D", []Entry{{Values: Values{"t": 1.5}, Metadata: &Metadata{Connector: "c", ReceivedAt: ms(1), PublishedAt: ms(2)}}})
		},
		"telemetry-floats": func(e *encoder) error {
			return e.deviceTelemetry("D", []Entry{{TS: 1, Values: Values{
				"f32": float32(0.1), "big": 1e21, "tiny": 1e-7, "neg0": math.Copysign(0, -1), "max": math.MaxFloat64,
				"i64": int64(math.MaxInt64), "u64": uint64(math.MaxUint64), "num": json.Number("1e3"), "raw": json.RawMessage(`{ "a" : [1, 2] }`),
			}}})
		},
		"self-telemetry-two": func(e *encoder) error {
			return e.selfTelemetry([]Entry{{TS: 1, Values: Values{"a": 1}}, {TS: 2, Values: Values{"a": 2}}})
		},
		"strings-escaped": func(e *encoder) error {
			return e.gatewayAttributes(Attributes{"Dev \"q\"\n": {"k\u2028": "a\x01b\xffc<>&"}})
		},
	}
	for name, f := range extra {
		p, err := encodeWith(f)
		require.NoError(t, err, name)
		got[name] = out{"", p}
	}
	b, err := json.MarshalIndent(got, "", "  ")
	require.NoError(t, err)
	b = append(b, '\n')
	path := filepath.Join("testdata", "golden", "encoders.json")
	if *update {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, b, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -run TestGolden -update")
	assert.Equal(t, string(want), string(b))
}

// TestNeverSend tries every public way to produce the payloads the server
// rejects and checks each one is refused before sending.
func TestNeverSend(t *testing.T) {
	vectors := loadVectors(t, "never-send.json")
	tries := map[string]func() error{
		"attribute-request-doc-array-form": nil, // no call builds it: one scope per request (TestAttributeRequestNeverCombined)
		"attribute-request-comma-key":      nil, // the gateway form has no comma splitting; a comma key is asked for literally
		"telemetry-object-not-array": func() error {
			_, err := encodeWith(func(e *encoder) error { return e.deviceTelemetry("Device A", []Entry{{TS: 1}}) })
			return err
		},
		"telemetry-empty-array": func() error {
			_, err := encodeWith(func(e *encoder) error { return e.deviceTelemetry("Device A", nil) })
			return err
		},
		"telemetry-values-without-ts": func() error {
			_, err := encodeWith(func(e *encoder) error {
				return e.deviceTelemetry("Device A", []Entry{{Values: Values{"values": map[string]any{"t": 1}}}})
			})
			return err
		},
		"connect-empty-name": func() error { return checkDeviceName("") },
		"rpc-reply-without-data": func() error {
			_, p := encodeRPCReply(&RPCRequest{Device: "Device A"}, nil, nil)
			if !bytes.Contains(p, []byte(`"data":`)) {
				return nil
			}
			return errors.New("has data")
		},
		"telemetry-nan": func() error {
			_, err := encodeWith(func(e *encoder) error {
				return e.deviceTelemetry("Device A", []Entry{{TS: 1, Values: Values{"t": math.NaN()}}})
			})
			return err
		},
	}
	for name := range vectors {
		f, ok := tries[name]
		require.True(t, ok, "no check for never-send vector %s", name)
		if f != nil {
			assert.Error(t, f(), name)
		}
	}
	// The comma key goes out as one literal key, in the accepted form.
	assert.JSONEq(t, `{"id":1,"device":"Device A","client":true,"key":"a,b"}`,
		string(encodeAttrRequest(1, "Device A", true, []string{"a,b"})))
}

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

// Whole-payload encoders for the golden files and vectors: the records of
// a call packed into one message, as the sender does.

// unlimited is the size limit of encoders used for whole payloads.
var unlimited = sizeLimit{max: math.MaxInt, qos: 1}

// pack joins records into one payload.
func (e *encoder) pack(recs []*outbox.Record, err error) error {
	if err != nil {
		return err
	}
	m, n := outbox.Pack(recs, math.MaxInt, 0, 1, true)
	if n != len(recs) {
		return fmt.Errorf("packed %d of %d records", n, len(recs))
	}
	e.buf = append(e.buf[:0], m.Payload...)
	return nil
}

func (e *encoder) gatewayTelemetry(t Telemetry) error {
	return e.pack(e.telemetryRecords(t, unlimited))
}

func (e *encoder) deviceTelemetry(name string, entries []Entry) error {
	return e.gatewayTelemetry(Telemetry{name: entries})
}

// gatewayAttributes encodes a as one payload.
func (e *encoder) gatewayAttributes(a Attributes) error {
	return e.pack(e.attributeRecords(a, unlimited))
}
