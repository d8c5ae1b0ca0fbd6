package tbtest_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

// The scenario of ThingsBoard's MqttGatewayRateLimitsTest: with a gateway
// message limit of 3, device creation and session open each cost one
// message, so DeviceB's session open is the 4th and is refused (silently),
// and the next device lookup closes the connection without PUBACK.
func TestRateLimitGatewayMessages(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{}, tbtest.RateLimits{Messages: "3:600"}))
	w, _ := rawConnect(t, s, "rl", tbtest.DefaultToken, nil)

	w.publish("v1/gateway/telemetry", []byte(`{"DeviceA": [{"values": {"temperature": 42}}]}`), 1, 1)
	w.expectPuback(1)
	assert.Empty(t, s.Rejections())

	w.publish("v1/gateway/telemetry", []byte(`{"DeviceB": [{"values": {"temperature": 42}}]}`), 1, 2)
	w.expectPuback(2)
	r := lastRejection(t, s)
	assert.Contains(t, r.Reason, `session open of device "DeviceB"`)
	assert.False(t, r.Closed)
	assert.Equal(t, 1, s.TelemetryCount("DeviceB"), "telemetry is not a regular message")

	// Known sessions cost nothing more.
	w.publish("v1/gateway/telemetry", []byte(`{"DeviceA": [{"t": 1}]}`), 1, 3)
	w.expectPuback(3)

	w.publish("v1/gateway/connect", []byte(`{"device":"DeviceC"}`), 1, 4)
	w.expectClosed()
	r = lastRejection(t, s)
	assert.Contains(t, r.Reason, `lookup/creation of device "DeviceC"`)
	assert.True(t, r.Closed)
	_, ok := s.Device("DeviceC")
	assert.False(t, ok)
}

func TestRateLimitGatewayTelemetry(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{},
		tbtest.RateLimits{TelemetryMessages: "2:600", TelemetryDataPoints: "3:600"}))
	w, _ := rawConnect(t, s, "rl", tbtest.DefaultToken, nil)

	// Two data points of one device: one telemetry message.
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"ts":1,"values":{"a":1}},{"ts":2,"values":{"a":2,"n":null}}]}`), 1, 1)
	w.expectPuback(1)
	// Two more points exceed the data-point limit: PUBACK, then close.
	w.publish("v1/gateway/attributes", []byte(`{"A":{"x":1,"y":2}}`), 1, 2)
	w.expectPuback(2)
	w.expectClosed()
	r := lastRejection(t, s)
	assert.Contains(t, r.Reason, "rate limit (gateway telemetry)")
	assert.True(t, r.Closed)
	assert.Empty(t, s.ClientAttributes("A"))

	// The bucket is shared by all sub-devices and survives reconnects: the
	// refused message still used the last telemetry-message token.
	w, _ = rawConnect(t, s, "rl2", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/telemetry", []byte(`{"B":[{"b":1}]}`), 1, 1)
	w.expectPuback(1)
	w.expectClosed()
	assert.Equal(t, 0, s.TelemetryCount("B"))
}

func TestRateLimitGatewayDevice(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{TelemetryMessages: "1:600"}, tbtest.RateLimits{}))
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/devices/me/telemetry", `{"temperature": 42}`)
	// Sub-device traffic uses the other bucket.
	g.pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	g.pub("v1/gateway/telemetry", `{"A":[{"t":2}]}`)

	// The gateway's own topics close without PUBACK.
	tok := g.pubAsync("v1/devices/me/telemetry", `{"temperature": 43}`)
	g.waitLost()
	tok.Wait()
	require.Error(t, tok.Error())
	r := lastRejection(t, s)
	assert.Contains(t, r.Reason, "rate limit (gateway device)")
	assert.True(t, r.Closed)
	p, _ := s.Latest(s.GatewayName(tbtest.DefaultToken), "temperature")
	assert.Equal(t, int64(42), p.Value)

	// getSessionLimits is answered by the transport and never limited.
	g = dial(t, s, tbtest.DefaultToken)
	g.pub("v1/devices/me/rpc/request/1", `{"method":"getSessionLimits","params":{}}`)
	m := g.next("v1/devices/me/rpc/response/1")
	assert.Contains(t, string(m.Payload()), `"rateLimits":{"messages":null,"telemetryMessages":"1:600","telemetryDataPoints":null}`)
}

func TestRateLimitGatewayDeviceMessages(t *testing.T) {
	// Session open (1) and the two device-API subscriptions (2, 3) are
	// regular messages of the gateway device; the attribute request is the 4th.
	s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{Messages: "3:600"}, tbtest.RateLimits{}))
	g := dial(t, s, tbtest.DefaultToken)
	require.Equal(t, byte(1), g.sub("v1/devices/me/attributes", 1))
	require.Equal(t, byte(1), g.sub("v1/devices/me/rpc/request/+", 1))
	require.Equal(t, byte(1), g.sub("v1/gateway/rpc", 1)) // free
	assert.Empty(t, s.Rejections())
	tok := g.pubAsync("v1/devices/me/attributes/request/1", `{}`)
	g.waitLost()
	tok.Wait()
	assert.Contains(t, lastRejection(t, s).Reason, "rate limit (gateway device)")
}

// WIRE §10.4: the gateway's own session open and close cost one message
// each in its transportGatewayDevice* bucket; an open over the limit is
// refused as a rate-limited CONNECT (CONNACK 3 on MQTT 3.1.1).
func TestRateLimitGatewaySessionOpenAndClose(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{Messages: "2:600"}, tbtest.RateLimits{}))
	g := dial(t, s, tbtest.DefaultToken) // open: 1
	g.c.Disconnect(0)                    // close: 2
	waitFor(t, s, func() bool { return !connected(s, s.GatewayName(tbtest.DefaultToken)) }, "session closed")
	assert.Empty(t, s.Rejections())

	w, code := rawConnect(t, s, "third", tbtest.DefaultToken, nil)
	assert.Equal(t, byte(3), code, "server unavailable")
	w.expectClosed()
	r := lastRejection(t, s)
	assert.Contains(t, r.Reason, "session open")
	assert.True(t, r.Closed)
	assert.False(t, connected(s, s.GatewayName(tbtest.DefaultToken)))
}

// WIRE §10.4: a device that is new on a connection costs two regular
// messages (lookup and session open) again after a reconnect, and the
// session close of the cut connection costs one.
func TestRateLimitReannounceCosts(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{}, tbtest.RateLimits{Messages: "5:600"}))
	w, _ := rawConnect(t, s, "first", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/connect", []byte(`{"device":"A"}`), 1, 1) // 1, 2
	w.expectPuback(1)
	require.True(t, s.DropConnection(tbtest.DefaultToken)) // session close: 3
	w.expectClosed()

	w, _ = rawConnect(t, s, "second", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/connect", []byte(`{"device":"A"}`), 1, 1) // 4, 5
	w.expectPuback(1)
	assert.Empty(t, s.Rejections())
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"t":1}]}`), 1, 2) // data: the other limits
	w.expectPuback(2)
	w.publish("v1/gateway/connect", []byte(`{"device":"B"}`), 1, 3) // lookup: 6
	w.expectClosed()
	assert.Contains(t, lastRejection(t, s).Reason, `lookup/creation of device "B"`)
}

func TestInvalidRateLimitFailsNewServer(t *testing.T) {
	assert.Panics(t, func() {
		tbtest.NewServer(nil, tbtest.WithRateLimits(tbtest.RateLimits{Messages: "ten per minute"}, tbtest.RateLimits{}))
	})
}
