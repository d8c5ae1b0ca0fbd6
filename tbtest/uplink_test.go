package tbtest_test

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

func TestConnectCreatesDeviceWithProfile(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)

	v := vec(t, "uplink", "connect-with-profile")
	before := time.Now()
	g.pub(v.Topic, v.Payload)
	d, ok := s.Device("Device A")
	require.True(t, ok)
	assert.Equal(t, "Sensor A", d.Profile)
	assert.Equal(t, tbtest.DefaultToken, d.Gateway)
	assert.True(t, d.Connected)
	assert.False(t, d.IsGateway)
	assert.False(t, d.Created.Before(before))

	// An existing device keeps its profile.
	g.pub("v1/gateway/connect", `{"device":"Device A","type":"Other"}`)
	d, _ = s.Device("Device A")
	assert.Equal(t, "Sensor A", d.Profile)

	// Without type (or type null) the profile is "default".
	g.pub(vec(t, "uplink", "connect-default-profile").Topic, `{"device":"Device B","type":null}`)
	d, _ = s.Device("Device B")
	assert.Equal(t, "default", d.Profile)

	// A device created in the UI keeps its profile too.
	s.AddDevice("Device C", "Preset")
	g.pub("v1/gateway/connect", `{"device":"Device C","type":"X"}`)
	d, _ = s.Device("Device C")
	assert.Equal(t, "Preset", d.Profile)
	assert.Equal(t, tbtest.DefaultToken, d.Gateway)
}

func TestImplicitConnectOnDataUplinks(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)

	g.pub("v1/gateway/telemetry", `{"T":[{"k":1}]}`)
	g.pub("v1/gateway/attributes", `{"At":{"k":1}}`)
	g.pub("v1/gateway/claim", `{"C":{}}`)
	g.pub("v1/gateway/attributes/request", `{"id":1,"device":"R","client":true,"key":"k"}`)
	g.pub("v1/gateway/rpc", `{"device":"P","id":0,"data":{}}`)
	for _, name := range []string{"T", "At", "C", "R", "P"} {
		d, ok := s.Device(name)
		require.True(t, ok, name)
		assert.Equal(t, "default", d.Profile, name)
		assert.True(t, d.Connected, name)
	}
}

func TestDisconnectClosesSession(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"Device A"}`)
	require.True(t, connected(s, "Device A"))

	v := vec(t, "uplink", "disconnect")
	g.pub(v.Topic, v.Payload)
	assert.False(t, connected(s, "Device A"))

	sent := len(s.Sent())
	s.SetSharedAttributes("Device A", map[string]any{"x": 1})
	assert.Len(t, s.Sent(), sent, "no downlink to a disconnected device")
	assert.Equal(t, int64(1), s.SharedAttributes("Device A")["x"], "still stored")

	// Disconnect of an unknown device is acknowledged at once.
	g.pub("v1/gateway/disconnect", `{"device":"never seen"}`)
	_, ok := s.Device("never seen")
	assert.False(t, ok)
}

func TestTelemetryValueTyping(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)

	v := vec(t, "uplink", "telemetry-all-value-types")
	g.pub(v.Topic, v.Payload)

	key := func(k string) []tbtest.Point { return s.Series("Device A", k) }
	require.Len(t, key("key1"), 2)
	assert.Equal(t, []tbtest.Point{{TS: 10000, Value: "value1"}, {TS: 20000, Value: "value1"}}, key("key1"))
	assert.Equal(t, true, key("key2")[0].Value)
	assert.Equal(t, float64(3.0), key("key3")[0].Value, "3.0 stays a double")
	assert.Equal(t, int64(4), key("key4")[0].Value, "4 is a long")
	assert.Equal(t, json.RawMessage(`{"someNumber":42,"someArray":[1,2,3],"someNestedObject":{"key":"value"}}`), key("key5")[1].Value)
	assert.Equal(t, 10, s.TelemetryCount("Device A"))
	assert.Equal(t, []string{"key1", "key2", "key3", "key4", "key5"}, s.TelemetryKeys("Device A"))
	assert.Nil(t, s.TelemetryKeys("unknown"))
	p, ok := s.Latest("Device A", "key4")
	require.True(t, ok)
	assert.Equal(t, int64(20000), p.TS)

	// Numbers and numeric strings (type cast on), flat object at server time.
	before := time.Now().UnixMilli()
	g.pub("v1/gateway/telemetry", `{"Cast":[{
		"s42":"42", "s0123":"0123", "s1.5":"1.5", "sneg":"-7", "stext":"abc", "sexp":"1e5",
		"n73":73, "n1E+1":1E+1, "n4.20E1":4.20E1, "n42.0":42.0, "n1.5":1.5,
		"big":12345678901234567890, "dec17":0.12345678901234567,
		"null":null, "arr":[1, 2], "obj":{"a": [true]}, "bool":false}]}`)
	after := time.Now().UnixMilli()
	want := map[string]any{
		"s42": int64(42), "s0123": int64(123), "s1.5": 1.5, "sneg": int64(-7), "stext": "abc", "sexp": "1e5",
		"n73": int64(73), "n1E+1": int64(10), "n4.20E1": int64(42), "n42.0": 42.0, "n1.5": 1.5,
		"big": "12345678901234567890", "dec17": "0.12345678901234567",
		"arr": json.RawMessage(`[1,2]`), "obj": json.RawMessage(`{"a":[true]}`), "bool": false,
	}
	for k, w := range want {
		p, ok := s.Latest("Cast", k)
		if assert.True(t, ok, k) {
			assert.Equal(t, w, p.Value, k)
			assert.GreaterOrEqual(t, p.TS, before, k)
			assert.LessOrEqual(t, p.TS, after, k)
		}
	}
	_, ok = s.Latest("Cast", "null")
	assert.False(t, ok, "null values are skipped")
	assert.Equal(t, len(want), s.TelemetryCount("Cast"))
}

func TestTelemetryItemForms(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)

	// {"values":…} without ts is stored as one JSON key named "values".
	v := vec(t, "never-send", "telemetry-values-without-ts")
	g.pub(v.Topic, v.Payload)
	p, ok := s.Latest("Device A", "values")
	require.True(t, ok)
	assert.Equal(t, json.RawMessage(`{"t":1}`), p.Value)
	_, ok = s.Latest("Device A", "t")
	assert.False(t, ok)

	// {"ts":…} without values stores a long key "ts".
	g.pub("v1/gateway/telemetry", `{"B":[{"ts":1,"t":2}]}`)
	p, _ = s.Latest("B", "ts")
	assert.Equal(t, int64(1), p.Value)
	assert.NotEqual(t, int64(1), p.TS)

	// Metadata is validated and not stored.
	v = vec(t, "uplink", "telemetry-with-metadata")
	g.pub(v.Topic, v.Payload)
	p, _ = s.Latest("Device A", "temperature")
	assert.Equal(t, tbtest.Point{TS: 1700000000000, Value: int64(21)}, p)
	_, ok = s.Latest("Device A", "metadata")
	assert.False(t, ok)

	// Several devices, several items; {"A":[{}]} is fine.
	v = vec(t, "uplink", "telemetry-two-devices")
	g.pub(v.Topic, v.Payload)
	assert.Equal(t, []tbtest.Point{{TS: 1483228800000, Value: int64(42)}, {TS: 1483228801000, Value: int64(43)}}, s.Series("Device A", "temperature")[1:])
	assert.Equal(t, 2, s.TelemetryCount("Device B"))
	g.pub("v1/gateway/telemetry", `{"E":[{}]}`)
	assert.True(t, connected(s, "E"))

	// A non-array entry is skipped when a valid one remains.
	g.pub("v1/gateway/telemetry", `{"Skip":{"t":1},"Keep":[{"t":1}]}`)
	_, ok = s.Device("Skip")
	assert.False(t, ok)
	assert.Equal(t, 1, s.TelemetryCount("Keep"))
	assert.Contains(t, lastRejection(t, s).Reason, `"Skip" skipped`)
	assert.False(t, lastRejection(t, s).Closed)

	// Latest keeps the greatest timestamp.
	g.pub("v1/gateway/telemetry", `{"L":[{"ts":20,"values":{"x":2}},{"ts":10,"values":{"x":1}}]}`)
	p, _ = s.Latest("L", "x")
	assert.Equal(t, tbtest.Point{TS: 20, Value: int64(2)}, p)
	assert.Len(t, s.Series("L", "x"), 2)
}

func TestClientAttributes(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	v := vec(t, "uplink", "attributes-two-devices")
	g.pub(v.Topic, v.Payload)
	want := map[string]any{"attribute1": "value1", "attribute2": int64(42)}
	assert.Equal(t, want, s.ClientAttributes("Device A"))
	assert.Equal(t, want, s.ClientAttributes("Device B"))

	v = vec(t, "uplink", "attributes-doc-example")
	g.pub(v.Topic, v.Payload)
	attrs := s.ClientAttributes("Device A")
	assert.Equal(t, 1.0, attrs["fw_version"], `"1.0" is cast to a double`)
	assert.Equal(t, int64(87), attrs["battery"])
	assert.Empty(t, s.SharedAttributes("Device A"))
	assert.Nil(t, s.ClientAttributes("unknown"))
}

func TestClaims(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	v := vec(t, "uplink", "claim-two-devices")
	g.pub(v.Topic, v.Payload)
	assert.Equal(t, []tbtest.Claim{{SecretKey: "value_A", DurationMs: 60000}}, s.Claims("Device A"))
	assert.Equal(t, []tbtest.Claim{{SecretKey: "value_B", DurationMs: 60000}}, s.Claims("Device B"))

	v = vec(t, "uplink", "claim-defaults")
	g.pub(v.Topic, v.Payload)
	assert.Equal(t, tbtest.Claim{SecretKey: "", DurationMs: tbtest.DefaultClaimDurationMs}, s.Claims("Device A")[1])

	g.pub("v1/devices/me/claim", `{"secretKey":"gw","durationMs":5}`)
	assert.Equal(t, []tbtest.Claim{{SecretKey: "gw", DurationMs: 5}}, s.Claims(s.GatewayName(tbtest.DefaultToken)))
}

func TestGatewayOwnTelemetryAndAttributes(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithNamedGateway("My GW", "tok"))
	g := dial(t, s, "tok")

	v := vec(t, "uplink", "self-telemetry")
	g.pub(v.Topic, v.Payload)
	p, ok := s.Latest("My GW", "cpu")
	require.True(t, ok)
	assert.Equal(t, 12.5, p.Value)

	g.pub("v1/devices/me/telemetry", `[{"ts":5,"values":{"mem":1}},{"ts":6,"values":{"mem":2}}]`)
	assert.Equal(t, []tbtest.Point{{TS: 5, Value: int64(1)}, {TS: 6, Value: int64(2)}}, s.Series("My GW", "mem"))

	g.pub("v1/devices/me/attributes", `{"a":1,"b":"x"}`)
	assert.Equal(t, map[string]any{"a": int64(1), "b": "x"}, s.ClientAttributes("My GW"))
}

func TestUplinksAreNotForwarded(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithGateway("g1"), tbtest.WithGateway("g2"))
	g1 := dial(t, s, "g1")
	g2 := dial(t, s, "g2")
	require.Equal(t, byte(1), g2.sub("v1/gateway/attributes", 1))
	require.Equal(t, byte(1), g2.sub("v1/gateway/rpc", 1))

	g1.pub("v1/gateway/attributes", `{"A":{"x":1}}`)
	g1.pub("v1/gateway/rpc", `{"device":"A","id":0,"data":{}}`)
	g2.pub("v1/devices/me/rpc/request/1", `{"method":"getSessionLimits","params":{}}`)
	g2.next("v1/devices/me/rpc/response/1") // g2 has read everything sent before
	assert.Equal(t, 0, g2.received("v1/gateway/attributes"))
	assert.Equal(t, 0, g2.received("v1/gateway/rpc"))

	msgs := s.Messages()
	require.Len(t, msgs, 3)
	assert.Equal(t, "v1/gateway/attributes", msgs[0].Topic)
	assert.Equal(t, `{"A":{"x":1}}`, string(msgs[0].Payload))
	assert.Equal(t, "g1", msgs[0].Username)
	assert.Equal(t, byte(1), msgs[0].QoS)
	assert.NotEmpty(t, msgs[0].ClientID)
	assert.False(t, msgs[0].Time.IsZero())
}

// The v2 short topics (WIRE §1.2) store like their v1 forms.
func TestShortTopics(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithNamedGateway("GW", "tok"))
	g := dial(t, s, "tok")
	g.pub("v2/t", `{"ts":5,"values":{"a":1}}`)
	g.pub("v2/t/j", `[{"ts":6,"values":{"a":"2"}},{"ts":7,"values":{"a":3.5}}]`)
	assert.Equal(t, []tbtest.Point{{TS: 5, Value: int64(1)}, {TS: 6, Value: int64(2)}, {TS: 7, Value: 3.5}}, s.Series("GW", "a"))
	g.pub("v2/a", `{"x":1}`)
	g.pub("v2/a/j", `{"y":"z"}`)
	assert.Equal(t, map[string]any{"x": int64(1), "y": "z"}, s.ClientAttributes("GW"))

	// Errors as on v1: not JSON closes the connection (MQTT 3.1.1).
	tok := g.pubAsync("v2/t", `{`)
	g.waitLost()
	tok.Wait()
	assert.Contains(t, lastRejection(t, s).Reason, "not valid JSON")
}

// Subscribing to v2/a (or v2/a/j) gets the gateway's own shared-attribute
// updates there.
func TestShortTopicAttributeUpdates(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	require.Equal(t, byte(1), g.sub("v2/a", 1))
	s.SetGatewaySharedAttributes(tbtest.DefaultToken, map[string]any{"p": 1})
	m := g.next("v2/a")
	assert.Equal(t, `{"p":1}`, string(m.Payload()))
	require.Equal(t, byte(0), g.sub("v2/a/j", 0))
	s.DeleteGatewaySharedAttributes(tbtest.DefaultToken, "p")
	m = g.next("v2/a/j")
	assert.Equal(t, `{"deleted":["p"]}`, string(m.Payload()))
	assert.Equal(t, byte(0), m.Qos())

	// Unsubscribing the last one falls back to the other subscription.
	tok := g.c.Unsubscribe("v2/a/j")
	require.True(t, tok.WaitTimeout(waitTimeout))
	s.SetGatewaySharedAttributes(tbtest.DefaultToken, map[string]any{"q": true})
	m = g.next("v2/a")
	assert.Equal(t, `{"q":true}`, string(m.Payload()))
}

// BenchmarkTelemetryIngest measures what the server stores per second from
// a gateway publishing 64 KiB telemetry messages of the SDK's shape, 100
// unacknowledged at a time: go test -bench TelemetryIngest ./tbtest.
func BenchmarkTelemetryIngest(b *testing.B) {
	const devices, keys, window = 20, 5, 100
	var payloads [][]byte
	points := 0
	for m := 0; m < 64; m++ {
		var sb strings.Builder
		sb.WriteString("{")
		n := 0
		for d := 0; d < devices && sb.Len() < 60000; d++ {
			if d > 0 {
				sb.WriteString(",")
			}
			fmt.Fprintf(&sb, `"Device %04d":[`, d)
			for i := 0; i < 30; i++ {
				if i > 0 {
					sb.WriteString(",")
				}
				ts := 1700000000000 + int64(m*30+i)
				fmt.Fprintf(&sb, `{"ts":%d,"values":{"k0":%g,"k1":%d,"k2":%g,"k3":%d,"k4":true}}`, ts, float64(i)/4+0.125, m*i, float64(m)+0.5, i)
				n += keys
			}
			sb.WriteString("]")
		}
		sb.WriteString("}")
		payloads = append(payloads, []byte(sb.String()))
		points += n
	}
	s := tbtest.NewServer(b)
	c, err := net.Dial("tcp", s.Addr())
	require.NoError(b, err)
	defer c.Close()
	w := &wire{t: b, c: c, r: bufio.NewReader(c)}
	w.write(packet(0x10, append(append(encStr("MQTT"), 4, 0x82, 0, 60), append(encStr("bench"), encStr(tbtest.DefaultToken)...)...)))
	if typ, _, err := w.read(); err != nil || typ != 0x20 {
		b.Fatalf("no CONNACK: %v", err)
	}
	acks := make(chan struct{}, window)
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for range b.N * len(payloads) {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if typ, _, err := w.read(); err != nil || typ != 0x40 {
				done <- fmt.Errorf("PUBACK expected: %#x %v", typ, err)
				return
			}
			<-acks
		}
		done <- nil
	}()
	id := uint16(0)
	for range b.N {
		for _, p := range payloads {
			acks <- struct{}{}
			id++
			if id == 0 {
				id = 1
			}
			body := binary.BigEndian.AppendUint16(encStr("v1/gateway/telemetry"), id)
			if _, err := c.Write(packet(0x32, append(body, p...))); err != nil {
				b.Fatal(err)
			}
		}
	}
	require.NoError(b, <-done)
	b.StopTimer()
	b.ReportMetric(float64(points*b.N)/b.Elapsed().Seconds(), "points/s")
	require.Empty(b, s.Rejections())
}
