package tbgateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/internal/jsonx"
)

// Every encoder against the spec's vectors (testdata/vectors, kept equal to
// ../shared/vectors), the exact bytes in the golden file, and the payloads
// the server rejects that no call may build. The same vectors go through
// the public API and a real broker in interop_test.go.

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
		return topicGatewayDisconnect, `{"device":"Device A"}`, nil // checked through the public API in interop_test.go
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
