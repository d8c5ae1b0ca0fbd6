package tbtest_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

// outcome is how the server answers a QoS 1 publish on MQTT 3.1.1.
type outcome int

const (
	ackStays outcome = iota
	ackThenClose
	closeNoAck
	noAckStays
)

// publishRaw sends one QoS 1 publish on a fresh raw connection and checks
// the packet-level outcome.
func publishRaw(t *testing.T, s *tbtest.Server, topic, payload string, want outcome) {
	t.Helper()
	w, code := rawConnect(t, s, "raw-"+t.Name(), tbtest.DefaultToken, nil)
	require.Equal(t, byte(0), code)
	w.publish(topic, []byte(payload), 1, 7)
	switch want {
	case ackStays:
		w.expectPuback(7)
		w.ping()
	case ackThenClose:
		w.expectPuback(7)
		w.expectClosed()
	case closeNoAck:
		w.expectClosed()
	case noAckStays:
		w.ping() // PINGRESP comes first: the publish was never acknowledged
	}
}

func TestBadInput(t *testing.T) {
	never := func(name string) (string, string) {
		v := vec(t, "never-send", name)
		return v.Topic, v.Payload
	}
	type tc struct {
		name, topic, payload string
		want                 outcome
		reason               string
	}
	cases := []tc{}
	add := func(name string, want outcome, reason, topic, payload string) {
		cases = append(cases, tc{name, topic, payload, want, reason})
	}
	tp, pl := never("attribute-request-doc-array-form")
	add("attribute request in the documented array form", ackThenClose, "client is not a boolean", tp, pl)
	tp, pl = never("telemetry-object-not-array")
	add("telemetry value not an array", ackThenClose, "no valid device entry", tp, pl)
	tp, pl = never("connect-empty-name")
	add("connect with empty name", ackThenClose, "empty device name", tp, pl)
	add("disconnect with empty name", ackThenClose, "empty device name", "v1/gateway/disconnect", `{"device":""}`)
	add("connect without device", ackThenClose, "missing device", "v1/gateway/connect", `{"type":"x"}`)
	tp, pl = never("rpc-reply-without-data")
	add("RPC reply without data", ackThenClose, "without data", tp, pl)
	add("telemetry not an object", ackThenClose, "not a JSON object", "v1/gateway/telemetry", `[1]`)
	add("empty payload is JSON null", ackThenClose, "not a JSON object", "v1/gateway/connect", ``)
	add("empty telemetry object", ackThenClose, "no valid device entry", "v1/gateway/telemetry", `{}`)
	add("attribute request with keys as string", ackThenClose, "keys is not an array", "v1/gateway/attributes/request", `{"id":1,"device":"A","client":true,"keys":"a,b"}`)
	add("attribute request without id", ackThenClose, "without id", "v1/gateway/attributes/request", `{"device":"A","client":true,"key":"a"}`)
	add("attributes value not an object", ackThenClose, "no valid device entry", "v1/gateway/attributes", `{"A":[1]}`)
	add("claim value not an object", ackThenClose, "no valid device entry", "v1/gateway/claim", `{"A":"x"}`)
	tp, pl = never("telemetry-nan")
	add("NaN is not JSON", closeNoAck, "not valid JSON", tp, pl)
	add("unparseable JSON", closeNoAck, "not valid JSON", "v1/gateway/telemetry", `{"key1":, "key2":1}`)
	add("telemetry item not an object", closeNoAck, "item 0 is not a JSON object", "v1/gateway/telemetry", `{"A":[1]}`)
	add("telemetry values not an object", closeNoAck, "values is not a JSON object", "v1/gateway/telemetry", `{"A":[{"ts":1,"values":5}]}`)
	add("telemetry ts not a long", closeNoAck, "ts is not a long", "v1/gateway/telemetry", `{"A":[{"ts":"soon","values":{"a":1}}]}`)
	add("incomplete metadata", closeNoAck, "metadata.publishedTs", "v1/gateway/telemetry", `{"A":[{"t":1,"metadata":{"connector":"c","receivedTs":1}}]}`)
	add("own telemetry not JSON", closeNoAck, "not valid JSON", "v1/devices/me/telemetry", `{cpu:`)
	add("own telemetry a number", closeNoAck, "neither", "v1/devices/me/telemetry", `5`)
	add("own attribute request without payload", closeNoAck, "not a JSON object", "v1/devices/me/attributes/request/1", ``)
	tp, pl = never("telemetry-empty-array")
	add("empty telemetry array", noAckStays, "never acknowledged", tp, pl)
	add("unknown gateway topic", ackStays, "unknown gateway topic", "v1/gateway/metrics", `{}`)
	add("gatewayX topic", ackStays, "unknown gateway topic", "v1/gatewayX", `not even json`)
	add("unsupported topic", ackStays, "unsupported topic", "some/topic", `x`)
	add("device creation fails silently", ackStays, "device creation failed", "v1/gateway/telemetry", `{"":[{"a":1}]}`)
	add("connect with empty type", ackStays, "empty device profile", "v1/gateway/connect", `{"device":"NoProfile","type":""}`)
	add("device name too long", ackStays, "longer than 255", "v1/gateway/connect", `{"device":"`+strings.Repeat("n", 256)+`"}`)

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := tbtest.NewServer(t)
			publishRaw(t, s, c.topic, c.payload, c.want)
			r := lastRejection(t, s)
			assert.Contains(t, r.Reason, c.reason)
			assert.Equal(t, c.topic, r.Topic)
			assert.Equal(t, c.payload, string(r.Payload))
			assert.Equal(t, tbtest.DefaultToken, r.Username)
			assert.Equal(t, c.want == ackThenClose || c.want == closeNoAck, r.Closed)
			require.Len(t, s.Messages(), 1)
		})
	}
}

func TestBadInputWithPaho(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	require.True(t, connected(s, "A"))

	tok := g.pubAsync("v1/gateway/attributes/request", `{"id":1,"device":"A","client":["k1"],"shared":["k2"]}`)
	g.waitLost()
	tok.Wait()
	assert.False(t, connected(s, "A"), "sub-device sessions close with the connection")
	assert.False(t, connected(s, s.GatewayName(tbtest.DefaultToken)))
	assert.True(t, lastRejection(t, s).Closed)
}

func TestSendAckOnValidationError(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithSendAckOnValidationError())
	publishRaw(t, s, "v1/gateway/telemetry", `{"key1":, "key2":1}`, ackStays)
	assert.False(t, lastRejection(t, s).Closed)
	// Shape errors still close.
	publishRaw(t, s, "v1/gateway/telemetry", `{"A":{}}`, ackThenClose)

	// QoS 0: closed anyway.
	w, _ := rawConnect(t, s, "q0", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/telemetry", []byte(`{`), 0, 0)
	w.expectClosed()
}

func TestQoS0BadInputCloses(t *testing.T) {
	s := tbtest.NewServer(t)
	w, _ := rawConnect(t, s, "q0", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/connect", []byte(`{"device":""}`), 0, 0)
	w.expectClosed()
}

func TestMaxPayloadSizeCountsRemainingLength(t *testing.T) {
	// remaining length = 2 + len(topic) + 2 (packet id) + len(payload)
	const topic = "v1/gateway/telemetry"
	payloadOf := func(size int) string {
		prefix, suffix := `{"A":[{"k":"`, `"}]}`
		return prefix + strings.Repeat("x", size-len(prefix)-len(suffix)) + suffix
	}
	for _, tc := range []struct {
		name  string
		limit int
		opts  []tbtest.Option
	}{
		{"default", tbtest.DefaultMaxPayloadSize, nil},
		{"custom", 1000, []tbtest.Option{tbtest.WithMaxPayloadSize(1000)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tbtest.NewServer(t, tc.opts...)
			exact := tc.limit - 2 - len(topic) - 2
			publishRaw(t, s, topic, payloadOf(exact), ackStays)
			assert.Equal(t, 1, s.TelemetryCount("A"))
			assert.Empty(t, s.Rejections())

			publishRaw(t, s, topic, payloadOf(exact+1), closeNoAck)
			r := lastRejection(t, s)
			assert.True(t, r.Closed)
			assert.Equal(t, topic, r.Topic)
			assert.Len(t, r.Payload, exact+1)
			assert.Contains(t, r.Reason, "exceeds maxPayloadSize")
			assert.Equal(t, 1, s.TelemetryCount("A"), "not processed")

			// QoS 0 has no packet id: two more payload bytes fit.
			w, _ := rawConnect(t, s, "q0", tbtest.DefaultToken, nil)
			w.publish(topic, []byte(payloadOf(exact+2)), 0, 0)
			w.ping()
			assert.Equal(t, 2, s.TelemetryCount("A"))
		})
	}
}

func TestQoS2PublishGetsPuback(t *testing.T) {
	s := tbtest.NewServer(t)
	w, _ := rawConnect(t, s, "q2", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"t":1}]}`), 2, 9)
	w.expectPuback(9)
	w.write([]byte{0x62, 2, 0, 9}) // PUBREL: ignored, no PUBCOMP
	w.ping()
	assert.Equal(t, 1, s.TelemetryCount("A"))
}

func TestSubscribeFilters(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	for filter, want := range map[string]byte{
		"v1/gateway/attributes":               1,
		"v1/gateway/rpc":                      1,
		"v1/gateway/attributes/response":      1,
		"v1/devices/me/attributes":            1,
		"v1/devices/me/rpc/request/+":         1,
		"v1/devices/me/rpc/response/+":        1,
		"v1/devices/me/attributes/response/+": 1,
		"v1/gateway/disconnect":               0x80,
		"v1/gateway/#":                        0x80,
		"v1/devices/me/rpc/request/#":         0x80,
		"#":                                   0x80,
	} {
		assert.Equal(t, want, g.sub(filter, 2), filter)
	}
	assert.Equal(t, byte(0), g.sub("v1/gateway/rpc", 0))
	r := lastRejection(t, s)
	assert.Equal(t, "subscription filter not accepted", r.Reason)
	assert.False(t, r.Closed)
}
