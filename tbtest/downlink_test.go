package tbtest_test

import (
	"encoding/json"
	"testing"

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
