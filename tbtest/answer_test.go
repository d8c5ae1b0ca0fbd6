package tbtest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

// After a publish, an MQTT 5 connection stays, gets a DISCONNECT with a
// reason code, or is cut without one.
type after5 int

const (
	stays after5 = iota
	disconnected
	cut
)

// Every row of WIRE §2.2 (and the device-API rows of §5.2, §5.4) with a
// real MQTT 5 client: the PUBACK reason code and what happens next.
func TestMQTT5ReasonCodes(t *testing.T) {
	limits := func(own, gw tbtest.RateLimits) tbtest.Option { return tbtest.WithRateLimits(own, gw) }
	never := func(name string) (string, string) {
		v := vec(t, "never-send", name)
		return v.Topic, v.Payload
	}
	type step struct {
		topic, payload string
		qos            byte
	}
	cases := []struct {
		name   string
		opts   []tbtest.Option
		before []step // published first, each acknowledged with 0x00
		step
		code   byte // PUBACK reason code (0: none or success)
		noAck  bool // no PUBACK at all
		then   after5
		disc   byte // the DISCONNECT's code
		reason string
	}{
		{name: "success", step: step{"v1/gateway/telemetry", `{"A":[{"t":1}]}`, 1}},
		{name: "unparseable JSON, QoS 1", step: step{"v1/gateway/telemetry", `{"key1":, "key2":1}`, 1},
			code: 0x99, reason: "not valid JSON"},
		{name: "unparseable JSON, QoS 0", step: step{"v1/gateway/telemetry", `{"key1":, "key2":1}`, 0},
			then: disconnected, disc: 0x99, reason: "not valid JSON"},
		{name: "wrong shape", step: step{"v1/gateway/connect", `{"device":""}`, 1},
			code: 0x83, then: disconnected, disc: 0x83, reason: "empty device name"},
		{name: "wrong shape: documented attribute request", step: func() step {
			tp, pl := never("attribute-request-doc-array-form")
			return step{tp, pl, 1}
		}(), code: 0x83, then: disconnected, disc: 0x83, reason: "client is not a boolean"},
		{name: "conversion error", step: step{"v1/gateway/telemetry", `{"A":[1]}`, 1},
			code: 0x99, reason: "item 0 is not a JSON object"},
		{name: "conversion error of a claim", step: step{"v1/gateway/claim", `{"A":{"durationMs":"soon"}}`, 1},
			code: 0x99, reason: "durationMs is not a long"},
		{name: "device quota", opts: []tbtest.Option{tbtest.WithMaxDevices(1)},
			before: []step{{"v1/gateway/connect", `{"device":"A"}`, 1}},
			step:   step{"v1/gateway/telemetry", `{"B":[{"t":1}]}`, 1}, code: 0x97, reason: "Maximum number of devices reached!"},
		{name: "device quota on connect", opts: []tbtest.Option{tbtest.WithMaxDevices(1)},
			before: []step{{"v1/gateway/telemetry", `{"A":[{"t":1}]}`, 1}},
			step:   step{"v1/gateway/connect", `{"device":"B","type":"P"}`, 1}, code: 0x97, reason: "Maximum number"},
		{name: "device creation fails", step: step{"v1/gateway/telemetry", `{"` + strings.Repeat("n", 256) + `":[{"t":1}]}`, 1},
			code: 0x80, reason: "longer than 255"},
		{name: "device creation fails on connect", step: step{"v1/gateway/connect", `{"device":"D","type":""}`, 1},
			code: 0x80, reason: "empty device profile"},
		{name: "device creation fails for an attribute request", step: step{"v1/gateway/attributes/request", `{"id":1,"device":"` + strings.Repeat("n", 256) + `","client":true,"key":"a"}`, 1},
			code: 0x83, reason: "longer than 255"},
		{name: "device creation refused synchronously", opts: []tbtest.Option{limits(tbtest.RateLimits{}, tbtest.RateLimits{Messages: "2:600"})},
			before: []step{{"v1/gateway/connect", `{"device":"A"}`, 1}},
			step:   step{"v1/gateway/connect", `{"device":"B"}`, 1}, noAck: true, then: disconnected, disc: 0x8B, reason: "lookup/creation"},
		{name: "telemetry rate limit", opts: []tbtest.Option{limits(tbtest.RateLimits{}, tbtest.RateLimits{TelemetryMessages: "1:600"})},
			before: []step{{"v1/gateway/telemetry", `{"A":[{"t":1}]}`, 1}},
			step:   step{"v1/gateway/telemetry", `{"A":[{"t":2}]}`, 1}, code: 0x97, then: cut, reason: "rate limit (gateway telemetry)"},
		{name: "RPC reply rate limit", opts: []tbtest.Option{limits(tbtest.RateLimits{}, tbtest.RateLimits{Messages: "3:600"})},
			before: []step{{"v1/gateway/rpc", `{"device":"A","id":0,"data":{}}`, 1}},
			step:   step{"v1/gateway/rpc", `{"device":"A","id":1,"data":{}}`, 1}, code: 0x97, then: cut, reason: "RPC reply"},
		{name: "unknown gateway topic", step: step{"v1/gateway/metrics", `{}`, 1}, code: 0x90, reason: "unknown gateway topic"},
		{name: "unknown topic", step: step{"some/topic", `x`, 1}, code: 0x90, reason: "unsupported topic"},
		{name: "own telemetry not JSON", step: step{"v1/devices/me/telemetry", `{cpu:`, 1}, code: 0x99, reason: "not valid JSON"},
		{name: "own telemetry not JSON, QoS 0", step: step{"v2/t", `{cpu:`, 0}, then: disconnected, disc: 0x99, reason: "not valid JSON"},
		{name: "own attribute request, bad id", step: step{"v1/devices/me/attributes/request/x", `{}`, 1}, code: 0x99, reason: "not an integer"},
		{name: "own rate limit", opts: []tbtest.Option{limits(tbtest.RateLimits{TelemetryMessages: "1:600"}, tbtest.RateLimits{})},
			before: []step{{"v1/devices/me/telemetry", `{"cpu":1}`, 1}},
			step:   step{"v2/t/j", `{"cpu":2}`, 1}, noAck: true, then: disconnected, disc: 0x83, reason: "rate limit (gateway device)"},
		{name: "oversized packet", opts: []tbtest.Option{tbtest.WithMaxPayloadSize(200)},
			step: step{"v1/gateway/telemetry", `{"A":[{"k":"` + strings.Repeat("x", 200) + `"}]}`, 1}, noAck: true, then: disconnected, disc: 0x81, reason: "exceeds maxPayloadSize"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := tbtest.NewServer(t, tc.opts...)
			g := dial5(t, s, tbtest.DefaultToken)
			for _, b := range tc.before {
				g.ok(b.topic, b.payload)
			}
			if tc.noAck {
				// paho.golang would wait out its packet timeout: send and
				// go on (TestMQTT5RawPackets checks that no PUBACK comes).
				_, err := g.c.PublishWithOptions(context.Background(), &paho5.Publish{Topic: tc.topic, QoS: tc.qos, Payload: []byte(tc.payload)},
					paho5.PublishOptions{Method: paho5.PublishMethod_AsyncSend})
				require.NoError(t, err)
			}
			code, err := byte(0), error(nil)
			if !tc.noAck {
				code, err = g.pub(tc.topic, tc.payload, tc.qos)
			}
			switch {
			case tc.noAck:
			case tc.code != 0:
				require.Error(t, err)
				assert.Equal(t, tc.code, code, "PUBACK reason code")
			default:
				require.NoError(t, err)
				assert.Equal(t, byte(0), code)
			}
			switch tc.then {
			case stays:
				g.ok("v1/devices/me/rpc/request/1", `{"method":"getSessionLimits","params":{}}`)
				g.next("v1/devices/me/rpc/response/1")
			case disconnected:
				assert.Equal(t, tc.disc, g.waitDisconnect(), "DISCONNECT reason code")
			case cut:
				g.waitCut()
			}
			if tc.reason != "" {
				r := lastRejection(t, s)
				assert.Contains(t, r.Reason, tc.reason)
				assert.Equal(t, tc.then != stays, r.Closed)
			} else {
				assert.Empty(t, s.Rejections())
			}
		})
	}
}

// A conversion error decides the PUBACK (0x99) of a multi-device publish;
// a later device's data refused by the rate limit then keeps the session
// and an MQTT 5 gateway gets the v1/gateway/disconnect notice (WIRE §3.4).
func TestMQTT5DisconnectNotice(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{}, tbtest.RateLimits{TelemetryMessages: "2:600"}))
	g := dial5(t, s, tbtest.DefaultToken)
	g.ok("v1/gateway/telemetry", `{"C":[{"t":1}]}`)
	code, err := g.pub("v1/gateway/telemetry", `{"A":[{"t":1}],"Bad":[1],"B":[{"t":1}]}`, 1)
	require.Error(t, err)
	assert.Equal(t, byte(0x99), code)
	m := g.next("v1/gateway/disconnect")
	assert.JSONEq(t, vec(t, "downlink", "subdevice-dropped-mqtt5").Payload, strings.Replace(string(m.Payload), `"B"`, `"Device A"`, 1))
	assert.Equal(t, `{"device":"B","reason":150}`, string(m.Payload))
	assert.Equal(t, byte(1), m.QoS, "unsubscribable, QoS 1")
	assert.Equal(t, 1, s.TelemetryCount("A"), "devices before the refusal are stored")
	assert.Equal(t, 0, s.TelemetryCount("B"))
	assert.True(t, connected(s, "B"), "the notice does not close the sub-device session")
	g.ok("v1/gateway/connect", `{"device":"D"}`) // the session stays

	// MQTT 3.1.1 gets no notice; the connection stays too.
	s3 := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{}, tbtest.RateLimits{TelemetryMessages: "1:600"}))
	w, _ := rawConnect(t, s3, "v3", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/telemetry", []byte(`{"`+strings.Repeat("n", 256)+`":[{"t":1}],"B":[{"t":1}],"C":[{"t":1}]}`), 1, 1)
	w.expectPuback(1)
	w.ping()
	assert.Equal(t, 1, s3.TelemetryCount("B"))
	assert.Equal(t, 0, s3.TelemetryCount("C"))
}

func TestMQTT5Connack(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithGateway("tok"))
	g := dial5(t, s, "tok")
	assert.Equal(t, byte(0), g.connack.ReasonCode)
	p := g.connack.Properties
	require.NotNil(t, p)
	assert.Nil(t, p.ReceiveMaximum, "no CONNACK properties (WIRE §10.9)")
	assert.Nil(t, p.TopicAliasMaximum)
	assert.Nil(t, p.MaximumPacketSize)
	assert.Nil(t, p.MaximumQoS)
	assert.Empty(t, p.AssignedClientID)

	// The token as user name with any password (WIRE §10.3).
	_, err := tryDial5(t, s, &paho5.Connect{Username: "tok", UsernameFlag: true, Password: []byte("x"), PasswordFlag: true, ClientID: "any"})
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		cp   *paho5.Connect
		code byte
	}{
		{"unknown token", &paho5.Connect{Username: "nope", UsernameFlag: true}, 0x86},
		{"no user name", &paho5.Connect{ClientID: "c1"}, 0x85},
	} {
		g, err := tryDial5(t, s, tc.cp)
		require.Error(t, err, tc.name)
		require.NotNil(t, g.connack, tc.name)
		assert.Equal(t, tc.code, g.connack.ReasonCode, tc.name)
	}

	s.RefuseConnections(time.Minute)
	g, err = tryDial5(t, s, &paho5.Connect{Username: "tok", UsernameFlag: true})
	require.Error(t, err)
	assert.Equal(t, byte(0x88), g.connack.ReasonCode)

	limited := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{Messages: "1:600"}, tbtest.RateLimits{}))
	dial5(t, limited, tbtest.DefaultToken)
	g, err = tryDial5(t, limited, &paho5.Connect{Username: tbtest.DefaultToken, UsernameFlag: true})
	require.Error(t, err)
	assert.Equal(t, byte(0x9F), g.connack.ReasonCode, "session open rate limited")
}

func TestMQTT5SessionTakenOver(t *testing.T) {
	s := tbtest.NewServer(t)
	first := dial5(t, s, tbtest.DefaultToken)
	dial5(t, s, tbtest.DefaultToken)
	assert.Equal(t, byte(0x8E), first.waitDisconnect())
}

func TestMQTT5Subscribe(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial5(t, s, tbtest.DefaultToken)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	sa, err := g.c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{
		{Topic: "v1/gateway/rpc", QoS: 2}, {Topic: "v1/gateway/#", QoS: 1}, {Topic: "v1/gateway/disconnect", QoS: 1},
	}})
	require.Error(t, err, "paho.golang reports the failed filters")
	require.NotNil(t, sa)
	assert.Equal(t, []byte{1, 0x8F, 0x8F}, sa.Reasons)
	if sa.Properties != nil {
		assert.Empty(t, sa.Properties.ReasonString)
	}
}

// Downlinks reach an MQTT 5 gateway unsubscribed, at QoS 1, without
// properties.
func TestMQTT5Downlinks(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial5(t, s, tbtest.DefaultToken)
	g.ok("v1/gateway/connect", `{"device":"A"}`)
	s.SetSharedAttributes("A", map[string]any{"k": 1})
	m := g.next("v1/gateway/attributes")
	assert.Equal(t, `{"device":"A","data":{"k":1}}`, string(m.Payload))
	assert.Equal(t, byte(1), m.QoS)
	assert.Nil(t, m.Properties.TopicAlias)
	assert.Empty(t, m.Properties.User)

	res := callRPC(context.Background(), s, "A", "m", nil)
	m = g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"A","data":{"id":0,"method":"m","params":null}}`, string(m.Payload))
	g.ok("v1/gateway/rpc", `{"device":"A","id":0,"data":"ok"}`)
	require.NoError(t, result(t, res).err)
}

// Control actions with reason codes reach an MQTT 5 client.
func TestMQTT5Control(t *testing.T) {
	s := tbtest.NewServer(t)
	s.Control(tbtest.Match{Topic: "v1/gateway/telemetry"}, func(*tbtest.Packet) tbtest.Action { return tbtest.Reason(0x97) })
	s.Control(tbtest.Match{Topic: "v1/gateway/attributes"}, func(*tbtest.Packet) tbtest.Action { return tbtest.Disconnect(0x98) })
	g := dial5(t, s, tbtest.DefaultToken)
	code, err := g.pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`, 1)
	require.Error(t, err)
	assert.Equal(t, byte(0x97), code)
	assert.Zero(t, s.TelemetryCount("A"))
	g.ok("v1/gateway/telemetry", `{"A":[{"t":1}]}`) // one-shot
	_, err = g.c.PublishWithOptions(context.Background(), &paho5.Publish{Topic: "v1/gateway/attributes", QoS: 1, Payload: []byte(`{"A":{"a":1}}`)},
		paho5.PublishOptions{Method: paho5.PublishMethod_AsyncSend})
	require.NoError(t, err)
	assert.Equal(t, byte(0x98), g.waitDisconnect())
	assert.Empty(t, s.ClientAttributes("A"))
}

// Nothing of the PUBLISH is echoed into the PUBACK: a publish with a user
// property gets a valid reason code and no property (paho.golang view).
func TestMQTT5PubackCarriesNoProperties(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial5(t, s, tbtest.DefaultToken)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	pr, err := g.c.Publish(ctx, &paho5.Publish{Topic: "v1/gateway/telemetry", QoS: 1, Payload: []byte(`{"A":[{"t":1}]}`),
		Properties: &paho5.PublishProperties{User: paho5.UserProperties{{Key: "k", Value: "v"}}, ContentType: "application/json"}})
	require.NoError(t, err)
	assert.Equal(t, byte(0), pr.ReasonCode)
	if pr.Properties != nil {
		assert.Empty(t, pr.Properties.User)
		assert.Empty(t, pr.Properties.ReasonString)
	}
}

// Packet-exact MQTT 5 answers, read from a raw connection.
func TestMQTT5RawPackets(t *testing.T) {
	s := tbtest.NewServer(t)

	t.Run("CONNACK has no properties", func(t *testing.T) {
		_, connack := rawConnect5(t, s, "c", tbtest.DefaultToken)
		assert.Equal(t, []byte{0, 0, 0}, connack, "sessionPresent 0, code 0, property length 0")
	})
	t.Run("PUBACK copies nothing", func(t *testing.T) {
		w, _ := rawConnect5(t, s, "c", tbtest.DefaultToken)
		up := props(userProperty("trace", "1")...)
		w.publish5("v1/gateway/telemetry", []byte(`{"A":[{"t":1}]}`), 1, 7, up)
		w.expect(0x40, []byte{0, 7}, "success: packet id only")
		w.publish5("some/topic", []byte(`x`), 1, 8, up)
		typ, b, err := w.read()
		require.NoError(t, err)
		require.Equal(t, byte(0x40), typ)
		require.GreaterOrEqual(t, len(b), 3)
		assert.Equal(t, []byte{0, 8, 0x90}, b[:3])
		assert.True(t, len(b) == 3 || string(b[3:]) == "\x00", "no property: % x", b)
	})
	t.Run("wrong shape: PUBACK then DISCONNECT", func(t *testing.T) {
		w, _ := rawConnect5(t, s, "c", tbtest.DefaultToken)
		w.publish5("v1/gateway/connect", []byte(`{"device":""}`), 1, 3, props())
		w.expect(0x40, []byte{0, 3, 0x83}, "PUBACK 0x83")
		w.expect(0xe0, []byte{0x83, 0}, "DISCONNECT 0x83")
		w.expectClosed()
	})
	t.Run("empty telemetry array is never acknowledged", func(t *testing.T) {
		w, _ := rawConnect5(t, s, "c", tbtest.DefaultToken)
		w.publish5("v1/gateway/telemetry", []byte(`{"A":[]}`), 1, 4, props())
		w.ping()
	})
	t.Run("client DISCONNECT is answered", func(t *testing.T) {
		w, _ := rawConnect5(t, s, "c", tbtest.DefaultToken)
		w.write([]byte{0xe0, 0})
		w.expect(0xe0, []byte{}, "DISCONNECT 0x00, encoded without a reason code")
		w.expectClosed()
	})
	t.Run("refused CONNACK is followed by DISCONNECT", func(t *testing.T) {
		w, connack := rawConnect5(t, s, "c", "nope")
		assert.Equal(t, []byte{0, 0x86, 0}, connack)
		w.expect(0xe0, []byte{0x86, 0}, "DISCONNECT with the CONNACK code")
		w.expectClosed()
	})
	t.Run("rate-limited CONNECT", func(t *testing.T) {
		s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{Messages: "1:600"}, tbtest.RateLimits{}))
		rawConnect5(t, s, "first", tbtest.DefaultToken)
		w, connack := rawConnect5(t, s, "second", tbtest.DefaultToken)
		assert.Equal(t, []byte{0, 0x9F, 0}, connack, "CONNACK connection rate exceeded")
		w.expect(0xe0, []byte{0x96, 0}, "DISCONNECT message rate too high")
		w.expectClosed()
	})
	t.Run("backend error CONNECT", func(t *testing.T) {
		s := tbtest.NewServer(t)
		s.RefuseConnections(time.Minute)
		w, connack := rawConnect5(t, s, "c", tbtest.DefaultToken)
		assert.Equal(t, []byte{0, 0x88, 0}, connack)
		w.expect(0xe0, []byte{0x89, 0}, "DISCONNECT server busy")
		w.expectClosed()
	})
	t.Run("topic aliases are ignored", func(t *testing.T) {
		w, _ := rawConnect5(t, s, "c", tbtest.DefaultToken)
		alias := props(0x23, 0, 1)
		w.publish5("v1/gateway/telemetry", []byte(`{"Alias":[{"t":1}]}`), 1, 1, alias)
		w.expectPuback(1)
		w.publish5("", []byte(`{"Alias":[{"t":2}]}`), 1, 2, alias)
		w.expect(0x40, []byte{0, 2, 0x90}, "an empty topic name matches nothing")
		w.ping()
		assert.Equal(t, 1, s.TelemetryCount("Alias"))
		r := lastRejection(t, s)
		assert.Equal(t, "", r.Topic)
		assert.Equal(t, "", s.Messages()[len(s.Messages())-1].Topic)
	})
	t.Run("QoS 2 gets a PUBACK", func(t *testing.T) {
		w, _ := rawConnect5(t, s, "c", tbtest.DefaultToken)
		w.publish5("v1/gateway/telemetry", []byte(`{"Q2":[{"t":1}]}`), 2, 9, props())
		w.expect(0x40, []byte{0, 9}, "PUBACK, not PUBREC")
	})
	for _, tc := range []struct {
		name    string
		opts    []tbtest.Option
		topic   string
		payload string
		code    byte
	}{
		{"device creation refused synchronously: DISCONNECT 0x8B", []tbtest.Option{tbtest.WithRateLimits(tbtest.RateLimits{}, tbtest.RateLimits{Messages: "1:600"})},
			"v1/gateway/connect", `{"device":"A"}`, 0x8B},
		{"own rate limit: DISCONNECT 0x83", []tbtest.Option{tbtest.WithRateLimits(tbtest.RateLimits{TelemetryMessages: "1:600"}, tbtest.RateLimits{})},
			"v1/devices/me/telemetry", `{"cpu":1}`, 0x83},
		{"oversized packet: DISCONNECT 0x81", []tbtest.Option{tbtest.WithMaxPayloadSize(100)},
			"v1/gateway/telemetry", `{"A":[{"k":"` + strings.Repeat("x", 100) + `"}]}`, 0x81},
	} {
		t.Run(tc.name+", no PUBACK", func(t *testing.T) {
			s := tbtest.NewServer(t, tc.opts...)
			w, _ := rawConnect5(t, s, "c", tbtest.DefaultToken)
			w.publish5(tc.topic, []byte(tc.payload), 1, 1, props())
			if tc.code == 0x8B {
				w.expectPuback(1) // the lookup costs 1, the session open 2 (refused silently)
				w.publish5("v1/gateway/connect", []byte(`{"device":"B"}`), 1, 2, props())
			}
			if tc.code == 0x83 {
				w.expectPuback(1)
				w.publish5(tc.topic, []byte(tc.payload), 1, 2, props())
			}
			w.expect(0xe0, []byte{tc.code, 0}, "DISCONNECT first: no PUBACK")
			w.expectClosed()
		})
	}
	t.Run("MQTT 3.1.1 gets no codes", func(t *testing.T) {
		w, _ := rawConnect(t, s, "v3", tbtest.DefaultToken, nil)
		w.publish("some/topic", []byte(`x`), 1, 5)
		w.expect(0x40, []byte{0, 5}, "plain PUBACK")
		w.publish("v1/gateway/connect", []byte(`{"device":""}`), 1, 6)
		w.expect(0x40, []byte{0, 6}, "plain PUBACK")
		w.expectClosed()
	})
}

// A refused MQTT 5 QoS 0 publish on a gateway topic is not routed to the
// gateways subscribed to that topic (mochi would forward it).
func TestMQTT5QoS0NotForwarded(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithGateway("a"), tbtest.WithGateway("b"))
	sub := dial(t, s, "b")
	require.Equal(t, byte(1), sub.sub("v1/gateway/rpc", 1))
	w, _ := rawConnect5(t, s, "c", "a")
	w.publish5("v1/gateway/rpc", []byte(`{"device":"A","id":0,"data":{}}`), 0, 0, props())
	// Device creation fails: 0x80 decided, on a QoS 0 publish.
	w.publish5("v1/gateway/rpc", []byte(`{"device":"`+strings.Repeat("n", 256)+`","id":0,"data":{}}`), 0, 0, props())
	w.ping()
	sub.pub("v1/devices/me/rpc/request/1", `{"method":"getSessionLimits","params":{}}`)
	sub.next("v1/devices/me/rpc/response/1")
	assert.Zero(t, sub.received("v1/gateway/rpc"))
	assert.Contains(t, lastRejection(t, s).Reason, "longer than 255")
}
