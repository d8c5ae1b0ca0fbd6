package tbtest_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

func TestAttributeRequests(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/attributes", `{"Device A":{"attr1":"value1","attr2":true,"attr3":42.0}}`)
	s.SetSharedAttributes("Device A", map[string]any{"key3": 3, "key4": "four"})
	g.next("v1/gateway/attributes") // the push of the shared update

	cases := []struct {
		name, req, resp string
	}{
		{"one key → value", `{"id":1,"device":"Device A","client":true,"key":"attr1"}`,
			`{"id":1,"device":"Device A","value":"value1"}`},
		{"two keys → values", `{"id":2,"device":"Device A","client":true,"keys":["attr1","attr2"]}`,
			`{"id":2,"device":"Device A","values":{"attr1":"value1","attr2":true}}`},
		{"one of two found → values", `{"id":3,"device":"Device A","client":true,"keys":["attr1","undefined"]}`,
			`{"id":3,"device":"Device A","values":{"attr1":"value1"}}`},
		{"nothing found → neither", `{"id":4,"device":"Device A","client":true,"key":"nope"}`,
			`{"id":4,"device":"Device A"}`},
		{"shared scope", `{"id":5,"device":"Device A","client":false,"keys":["key3","key4"]}`,
			`{"id":5,"device":"Device A","values":{"key3":3,"key4":"four"}}`},
		{"scope is strict", `{"id":6,"device":"Device A","client":false,"key":"attr1"}`,
			`{"id":6,"device":"Device A"}`},
		{"keys [] → both scopes", `{"id":7,"device":"Device A","client":false,"keys":[]}`,
			`{"id":7,"device":"Device A","values":{"attr1":"value1","attr2":true,"attr3":42.0,"key3":3,"key4":"four"}}`},
		{"numeric string id, comma not split", `{"id":"8","device":"Device A","client":true,"key":"attr1,attr2"}`,
			`{"id":8,"device":"Device A"}`},
		{"one-element keys array → value", `{"id":9,"device":"Device A","client":true,"keys":["attr3"]}`,
			`{"id":9,"device":"Device A","value":42.0}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g.pub("v1/gateway/attributes/request", tc.req)
			m := g.next("v1/gateway/attributes/response")
			assert.Equal(t, tc.resp, string(m.Payload()), "exact bytes, Gson member order")
			assert.Equal(t, byte(1), m.Qos(), "unsubscribed: QoS 1")
		})
	}

	// Vector request forms.
	for _, name := range []string{"attribute-request-client-one-key", "attribute-request-shared-keys"} {
		v := vec(t, "uplink", name)
		g.pub(v.Topic, v.Payload)
		g.next("v1/gateway/attributes/response")
	}

	// Subscribed at QoS 0: the response comes at QoS 0.
	require.Equal(t, byte(0), g.sub("v1/gateway/attributes/response", 0))
	g.pub("v1/gateway/attributes/request", `{"id":10,"device":"Device A","client":true,"key":"attr2"}`)
	m := g.next("v1/gateway/attributes/response")
	assert.Equal(t, byte(0), m.Qos())
	assert.Equal(t, `{"id":10,"device":"Device A","value":true}`, string(m.Payload()))
}

func TestAttributeRequestAllKeysMerging(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/attributes", `{"D":{"c1":1,"c2":2,"c3":3},"E":{"c":1}}`)
	s.SetSharedAttributes("D", map[string]any{"s": "x"})
	s.SetSharedAttributes("E", map[string]any{"s": "y"})

	g.pub("v1/gateway/attributes/request", `{"id":1,"device":"D","client":true,"keys":[]}`)
	m := g.next("v1/gateway/attributes/response")
	assert.Equal(t, `{"id":1,"device":"D","values":{"c1":1,"c2":2,"c3":3},"value":"x"}`, string(m.Payload()))

	// One of each: a single "value" holding the shared one.
	g.pub("v1/gateway/attributes/request", `{"id":2,"device":"E","client":true,"keys":[]}`)
	m = g.next("v1/gateway/attributes/response")
	assert.Equal(t, `{"id":2,"device":"E","value":"y"}`, string(m.Payload()))
}

func TestSharedAttributePush(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"Dev"}`)

	// Delivered without a subscription, at QoS 1.
	s.SetSharedAttributes("Dev", map[string]any{
		"sharedStr": "value1", "sharedBool": true, "sharedDbl": 42.0, "sharedLong": 73,
		"sharedJson": json.RawMessage(`{"someNumber":42,"someArray":[1,2,3],"someNestedObject":{"key":"value"}}`),
	})
	m := g.next("v1/gateway/attributes")
	assert.Equal(t, byte(1), m.Qos())
	assert.JSONEq(t, vec(t, "downlink", "shared-attribute-update-types").Payload, string(m.Payload()))
	assert.Contains(t, string(m.Payload()), `"sharedDbl":42.0`, "doubles printed as Java does")

	s.DeleteSharedAttributes("Dev", "sharedJson")
	m = g.next("v1/gateway/attributes")
	assert.Equal(t, vec(t, "downlink", "shared-attribute-deleted").Payload, string(m.Payload()))
	assert.NotContains(t, s.SharedAttributes("Dev"), "sharedJson")

	// Subscribed at QoS 0: pushes come at QoS 0.
	require.Equal(t, byte(0), g.sub("v1/gateway/attributes", 0))
	s.SetSharedAttributes("Dev", map[string]any{"x": 1.5})
	m = g.next("v1/gateway/attributes")
	assert.Equal(t, byte(0), m.Qos())
	assert.Equal(t, `{"device":"Dev","data":{"x":1.5}}`, string(m.Payload()))

	// Not pushed to a device without a session.
	sent := len(s.Sent())
	s.SetSharedAttributes("Other", map[string]any{"x": 1})
	assert.Len(t, s.Sent(), sent)
	assert.Equal(t, int64(1), s.SharedAttributes("Other")["x"])
}

func TestRPC(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"Device A"}`)
	g.pub("v1/gateway/connect", `{"device":"Dev"}`)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	type result struct {
		data json.RawMessage
		err  error
	}
	call := func(device, method string, params any) chan result {
		ch := make(chan result, 1)
		go func() {
			d, err := s.RPC(ctx, device, method, params)
			ch <- result{d, err}
		}()
		return ch
	}

	// First RPC of each device has id 0.
	resA := call("Device A", "toggle_gpio", map[string]int{"pin": 1})
	m := g.next("v1/gateway/rpc")
	assert.Equal(t, vec(t, "downlink", "rpc-request").Payload, string(m.Payload()))
	assert.Equal(t, byte(1), m.Qos())
	v := vec(t, "uplink", "rpc-reply")
	g.pub(v.Topic, v.Payload)
	r := <-resA
	require.NoError(t, r.err)
	assert.Equal(t, `{"success":true}`, string(r.data))

	resDev := call("Dev", "getValue", true)
	m = g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"Dev","data":{"id":0,"method":"getValue","params":true}}`, string(m.Payload()))

	// Ids count per device; one-way RPCs consume ids too.
	require.NoError(t, s.OneWayRPC("Device A", "reboot", nil))
	m = g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"Device A","data":{"id":1,"method":"reboot","params":null}}`, string(m.Payload()))
	resA2 := call("Device A", "get", json.RawMessage(`[1, 2]`))
	m = g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"Device A","data":{"id":2,"method":"get","params":[1,2]}}`, string(m.Payload()))

	// Replies are matched by (device, id); a stale one is dropped.
	g.pub("v1/gateway/rpc", `{"device":"Device A","id":7,"data":"stale"}`)
	g.pub("v1/gateway/rpc", `{"device":"Device A","id":2,"data":"ok"}`)
	g.pub("v1/gateway/rpc", `{"device":"Dev","id":0,"data":{"response":"someResponse"}}`)
	r = <-resA2
	require.NoError(t, r.err)
	assert.Equal(t, `"ok"`, string(r.data))
	r = <-resDev
	require.NoError(t, r.err)
	assert.Equal(t, `{"response":"someResponse"}`, string(r.data))

	// Offline devices and unanswered calls.
	_, err := s.RPC(ctx, "nobody", "m", nil)
	require.ErrorIs(t, err, tbtest.ErrDeviceOffline)
	require.ErrorIs(t, s.OneWayRPC("nobody", "m", nil), tbtest.ErrDeviceOffline)
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	_, err = s.RPC(short, "Dev", "noReply", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestRPCSubscribedQoS0(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	require.Equal(t, byte(0), g.sub("v1/gateway/rpc", 0))
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	require.NoError(t, s.OneWayRPC("A", "m", map[string]any{}))
	m := g.next("v1/gateway/rpc")
	assert.Equal(t, byte(0), m.Qos(), "granted QoS of the subscription")
}

func TestGetSessionLimits(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		s := tbtest.NewServer(t)
		g := dial(t, s, tbtest.DefaultToken)
		v := vec(t, "uplink", "self-session-limits")
		g.pub(v.Topic, v.Payload)
		m := g.next("v1/devices/me/rpc/response/1")
		assert.Equal(t, `{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":null,"telemetryMessages":null,"telemetryDataPoints":null},"gatewayRateLimits":{"messages":null,"telemetryMessages":null,"telemetryDataPoints":null}}`, string(m.Payload()))
		assert.Equal(t, byte(1), m.Qos())
	})
	t.Run("reflects enforced limits", func(t *testing.T) {
		s := tbtest.NewServer(t, tbtest.WithMaxPayloadSize(1000), tbtest.WithRateLimits(
			tbtest.RateLimits{Messages: "20:600", TelemetryMessages: "10:600", TelemetryDataPoints: "40:600"},
			tbtest.RateLimits{Messages: "100:600", TelemetryMessages: "50:600", TelemetryDataPoints: "200:600"}))
		g := dial(t, s, tbtest.DefaultToken)
		require.Equal(t, byte(1), g.sub("v1/devices/me/rpc/response/+", 1))
		g.pub("v1/devices/me/rpc/request/7", `{"method":"getSessionLimits","params":{}}`)
		m := g.next("v1/devices/me/rpc/response/7")
		want := vec(t, "downlink", "self-session-limits-reply").Payload
		assert.JSONEq(t, want[:len(`{"maxPayloadSize":`)]+"1000"+want[len(`{"maxPayloadSize":65536`):], string(m.Payload()))
	})
	t.Run("explicit", func(t *testing.T) {
		s := tbtest.NewServer(t, tbtest.WithSessionLimits(tbtest.SessionLimits{MaxPayloadSize: 5, MaxInflightMessages: 6,
			GatewayRateLimits: tbtest.RateLimits{Messages: "1:1"}}))
		g := dial(t, s, tbtest.DefaultToken)
		g.pub("v1/devices/me/rpc/request/2", `{"method":"getSessionLimits","params":{}}`)
		m := g.next("v1/devices/me/rpc/response/2")
		assert.JSONEq(t, `{"maxPayloadSize":5,"maxInflightMessages":6,"rateLimits":{"messages":null,"telemetryMessages":null,"telemetryDataPoints":null},"gatewayRateLimits":{"messages":"1:1","telemetryMessages":null,"telemetryDataPoints":null}}`, string(m.Payload()))
	})
}

func TestGatewayOwnAttributeRequest(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/devices/me/attributes", `{"a":1,"b":"x","z":0}`)
	s.SetGatewaySharedAttributes(tbtest.DefaultToken, map[string]any{"c": true, "d": 2})

	v := vec(t, "uplink", "self-attribute-request")
	g.pub(v.Topic, v.Payload)
	m := g.next("v1/devices/me/attributes/response/7")
	assert.Equal(t, vec(t, "downlink", "self-attribute-response").Payload, string(m.Payload()))

	g.pub("v1/devices/me/attributes/request/8", `{}`)
	m = g.next("v1/devices/me/attributes/response/8")
	assert.Equal(t, `{"client":{"a":1,"b":"x","z":0},"shared":{"c":true,"d":2}}`, string(m.Payload()))

	g.pub("v1/devices/me/attributes/request/9", `{"sharedKeys":"nope"}`)
	m = g.next("v1/devices/me/attributes/response/9")
	assert.Equal(t, `{}`, string(m.Payload()))
}

func TestGatewaySharedAttributePush(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	sent := len(s.Sent())
	s.SetGatewaySharedAttributes(tbtest.DefaultToken, map[string]any{"pollPeriod": 1})
	assert.Len(t, s.Sent(), sent, "device-API updates need a subscription")

	require.Equal(t, byte(1), g.sub("v1/devices/me/attributes", 1))
	s.SetGatewaySharedAttributes(tbtest.DefaultToken, map[string]any{"pollPeriod": 5000})
	m := g.next("v1/devices/me/attributes")
	assert.Equal(t, vec(t, "downlink", "self-shared-update").Payload, string(m.Payload()))
	s.DeleteGatewaySharedAttributes(tbtest.DefaultToken, "pollPeriod")
	m = g.next("v1/devices/me/attributes")
	assert.Equal(t, `{"deleted":["pollPeriod"]}`, string(m.Payload()))
}

func TestGatewayRPC(t *testing.T) {
	s := tbtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err := s.GatewayRPC(ctx, tbtest.DefaultToken, "reboot", nil)
	require.ErrorIs(t, err, tbtest.ErrDeviceOffline)
	_, err = s.GatewayRPC(ctx, "unknown", "reboot", nil)
	require.ErrorIs(t, err, tbtest.ErrUnknownGateway)

	g := dial(t, s, tbtest.DefaultToken)
	// Not subscribed to v1/devices/me/rpc/request/+: the RPC waits queued,
	// and is dropped when its context ends.
	sent := len(s.Sent())
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	_, err = s.GatewayRPC(short, tbtest.DefaultToken, "expired", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Len(t, s.Sent(), sent, "nothing written before the subscription")

	require.Equal(t, byte(1), g.sub("v1/devices/me/rpc/request/+", 1))
	done := make(chan json.RawMessage, 1)
	go func() {
		d, err := s.GatewayRPC(ctx, tbtest.DefaultToken, "reboot", map[string]any{})
		assert.NoError(t, err)
		done <- d
	}()
	m := g.next("v1/devices/me/rpc/request/1")
	assert.Equal(t, `{"method":"reboot","params":{}}`, string(m.Payload()))
	assert.Equal(t, 0, g.received("v1/devices/me/rpc/request/0"), "the expired RPC is never delivered")
	g.pub("v1/devices/me/rpc/response/1", `{"done":true}`)
	assert.Equal(t, `{"done":true}`, string(<-done))

	// Subscribed: delivered at once; the answer is returned verbatim.
	go func() {
		d, err := s.GatewayRPC(ctx, tbtest.DefaultToken, "ping", "x")
		assert.NoError(t, err)
		done <- d
	}()
	m = g.next("v1/devices/me/rpc/request/2")
	assert.Equal(t, `{"method":"ping","params":"x"}`, string(m.Payload()))
	g.pub("v1/devices/me/rpc/response/2", `not json`)
	assert.Equal(t, `not json`, string(<-done))
}

func TestDeviceRenamedAndDeletedNotifications(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"Old Name","type":"T"}`)
	g.pub("v1/gateway/connect", `{"device":"Device A"}`)

	s.NotifyDeviceRenamed("Old Name", "New Name")
	s.NotifyDeviceDeleted("Device A")
	_, ok := s.Device("Old Name")
	assert.False(t, ok)
	d, ok := s.Device("New Name")
	require.True(t, ok)
	assert.Equal(t, "T", d.Profile)
	assert.False(t, d.Connected, "the session under the old name is closed")
	_, ok = s.Device("Device A")
	assert.False(t, ok)

	// Delivered once the gateway subscribes to its RPC topic.
	require.Equal(t, byte(1), g.sub("v1/devices/me/rpc/request/+", 1))
	m := g.next("v1/devices/me/rpc/request/0")
	assert.JSONEq(t, `{"method":"gateway_device_renamed","params":{"Old Name":"New Name"}}`, string(m.Payload()))
	m = g.next("v1/devices/me/rpc/request/1")
	assert.JSONEq(t, `{"method":"gateway_device_deleted","params":"Device A"}`, string(m.Payload()))

	// A later uplink for a deleted name creates a new device.
	g.pub("v1/gateway/telemetry", `{"Device A":[{"t":1}]}`)
	assert.True(t, connected(s, "Device A"))
}
