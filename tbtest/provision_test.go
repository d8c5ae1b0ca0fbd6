package tbtest_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

// provisionServer serves two profiles: "sensors" creates devices, "pre"
// only provisions its pre-provisioned devices.
func provisionServer(t *testing.T, opts ...tbtest.Option) *tbtest.Server {
	return tbtest.NewServer(t, append([]tbtest.Option{tbtest.WithProvisioning(
		tbtest.ProvisionProfile{Name: "sensors", Key: "key1", Secret: "secret1"},
		tbtest.ProvisionProfile{Name: "pre", Key: "key2", Secret: "secret2",
			Strategy:       tbtest.CheckPreProvisionedDevices,
			PreProvisioned: []tbtest.PreProvisionedDevice{{Name: "known", AccessToken: "known-token"}}},
	)}, opts...)...)
}

// provision opens a provision session (user name "provision"), sends
// request and returns the reply on /provision/response.
func provision(t *testing.T, s *tbtest.Server, request string) (*gw, map[string]any) {
	t.Helper()
	g := dial(t, s, "provision")
	require.Equal(t, byte(1), g.sub("/provision/response", 1))
	g.pub("/provision/request", request)
	m := g.next("/provision/response")
	var out map[string]any
	require.NoError(t, json.Unmarshal(m.Payload(), &out), string(m.Payload()))
	return g, out
}

func TestProvisionReplies(t *testing.T) {
	s := provisionServer(t)
	s.AddDevice("existing", "sensors")
	notFound := map[string]any{"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}
	failure := map[string]any{"errorMsg": "Failed to provision device!", "status": "FAILURE"}
	for _, tc := range []struct {
		name, request string
		want          map[string]any
	}{
		{"access token", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d1","token":"tok1"}`,
			map[string]any{"credentialsValue": "tok1", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}},
		{"explicit access token", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d2","credentialsType":"ACCESS_TOKEN","token":"tok2"}`,
			map[string]any{"credentialsValue": "tok2", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}},
		{"mqtt basic", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d3","credentialsType":"MQTT_BASIC","clientId":"c3","username":"u3","password":"p3"}`,
			map[string]any{"credentialsValue": map[string]any{"clientId": "c3", "userName": "u3", "password": "p3"}, "credentialsType": "MQTT_BASIC", "status": "SUCCESS"}},
		{"x509", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d4","credentialsType":"X509_CERTIFICATE","hash":"MIIB..."}`,
			map[string]any{"credentialsValue": "MIIB...", "credentialsType": "X509_CERTIFICATE", "status": "SUCCESS"}},
		{"pre-provisioned", `{"provisionDeviceKey":"key2","provisionDeviceSecret":"secret2","deviceName":"known","token":"ignored"}`,
			map[string]any{"credentialsValue": "known-token", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}},
		{"wrong secret", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"nope","deviceName":"d5"}`, notFound},
		{"unknown key", `{"provisionDeviceKey":"key9","provisionDeviceSecret":"secret1","deviceName":"d5"}`, notFound},
		{"empty key and secret", `{"provisionDeviceKey":"","provisionDeviceSecret":"","deviceName":"d5"}`, notFound},
		{"missing key", `{"provisionDeviceSecret":"secret1","deviceName":"d5"}`, notFound},
		{"device exists", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"existing"}`, failure},
		{"token taken", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d6","token":"tok1"}`, failure},
		{"not pre-provisioned", `{"provisionDeviceKey":"key2","provisionDeviceSecret":"secret2","deviceName":"stranger"}`, failure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, got := provision(t, s, tc.request)
			assert.Equal(t, tc.want, got)
		})
	}
	got := s.Provisioned()
	require.Len(t, got, 5)
	assert.Equal(t, "d1", got[0].Name)
	assert.Equal(t, "sensors", got[0].Profile)
	assert.Equal(t, "tok1", got[0].Token)
	assert.Equal(t, tbtest.CredentialsMQTTBasic, got[2].CredentialsType)
	assert.Equal(t, "u3", got[2].Username)
	assert.Equal(t, "MIIB...", got[3].Hash)
	assert.True(t, got[4].PreProvisioned)
	d, ok := s.Device("d1")
	require.True(t, ok)
	assert.Equal(t, "sensors", d.Profile)
	assert.False(t, d.IsGateway)
	_, ok = s.Device("d5")
	assert.False(t, ok, "a refused request created a device")
}

func TestProvisionGeneratedTokenAndName(t *testing.T) {
	s := provisionServer(t)
	_, got := provision(t, s, `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1"}`)
	assert.Equal(t, "SUCCESS", got["status"])
	assert.Equal(t, "ACCESS_TOKEN", got["credentialsType"])
	tok, _ := got["credentialsValue"].(string)
	assert.Len(t, tok, 20)
	p := s.Provisioned()
	require.Len(t, p, 1)
	assert.Equal(t, tok, p[0].Token)
	assert.NotEmpty(t, p[0].Name)
}

func TestProvisionClosesAfterDelay(t *testing.T) {
	s := provisionServer(t, tbtest.WithProvisionCloseDelay(100*time.Millisecond))
	g, got := provision(t, s, `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d1"}`)
	assert.Equal(t, "SUCCESS", got["status"])
	g.waitLost()
	// A NOT_FOUND answer is followed by the same close.
	g, got = provision(t, s, `{"provisionDeviceKey":"x","provisionDeviceSecret":"y"}`)
	assert.Equal(t, "NOT_FOUND", got["status"])
	g.waitLost()
}

func TestProvisionStaysOpenBeforeDelay(t *testing.T) {
	// With the default 60 s delay the session is still usable right after
	// the answer: a second request is answered too.
	s := provisionServer(t)
	g, got := provision(t, s, `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d1"}`)
	assert.Equal(t, "SUCCESS", got["status"])
	g.pub("/provision/request", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d1"}`)
	m := g.next("/provision/response")
	assert.JSONEq(t, `{"errorMsg":"Failed to provision device!","status":"FAILURE"}`, string(m.Payload()))
	assert.True(t, g.c.IsConnectionOpen())
}

func TestProvisionOnlySession311(t *testing.T) {
	s := provisionServer(t)
	// Client id "provision" without a user name opens a provision session too.
	g := dial(t, s, "", func(o *paho.ClientOptions) { o.SetClientID("provision") })
	assert.Equal(t, byte(0x80), g.sub("v1/devices/me/attributes", 1))
	assert.Equal(t, byte(0x80), g.sub("v1/gateway/rpc", 1))
	assert.Equal(t, byte(1), g.sub("/provision/response", 1))

	w, code := rawConnect(t, s, "provision", "", nil)
	require.Equal(t, byte(0), code)
	w.publish("v1/devices/me/telemetry", []byte(`{"a":1}`), 1, 7)
	w.expectPuback(7)
	w.expectClosed()
	assert.Empty(t, s.TelemetryKeys(s.GatewayName(tbtest.DefaultToken)))
	assert.Equal(t, "provision session: topic not allowed", lastRejection(t, s).Reason)

	// An unparseable request closes the MQTT 3.1.1 session without PUBACK.
	w, code = rawConnect(t, s, "c1", "provision", nil)
	require.Equal(t, byte(0), code)
	w.publish("/provision/request", []byte(`{not json`), 1, 8)
	w.expectClosed()
	assert.Empty(t, s.Provisioned())
}

func TestProvisionOnlySession5(t *testing.T) {
	s := provisionServer(t)
	g := dial5(t, s, "provision")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	sa, err := g.c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{
		{Topic: "/provision/response", QoS: 1}, {Topic: "v1/devices/me/attributes", QoS: 1},
	}})
	require.Error(t, err, "paho.golang reports the failed filter")
	require.NotNil(t, sa)
	assert.Equal(t, []byte{1, 0x8F}, sa.Reasons)
	g.ok("/provision/request", `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"d5","credentialsType":"MQTT_BASIC","username":"u"}`)
	m := g.next("/provision/response")
	assert.JSONEq(t, `{"credentialsValue":{"clientId":"","userName":"u","password":""},"credentialsType":"MQTT_BASIC","status":"SUCCESS"}`, string(m.Payload))
	code, _ := g.pub("v1/gateway/telemetry", `{"A":[{"x":1}]}`, 1)
	assert.Equal(t, byte(0x90), code)
	assert.Equal(t, byte(0x90), g.waitDisconnect())
	_, ok := s.Device("A")
	assert.False(t, ok)
}

func TestProvisionedGatewayConnects(t *testing.T) {
	s := provisionServer(t)
	_, got := provision(t, s, `{"provisionDeviceKey":"key1","provisionDeviceSecret":"secret1","deviceName":"New GW","token":"gw-token","gateway":true}`)
	require.Equal(t, "SUCCESS", got["status"])
	p := s.Provisioned()
	require.Len(t, p, 1)
	assert.True(t, p[0].Gateway)
	assert.Equal(t, "New GW", s.GatewayName("gw-token"))

	g := dial(t, s, "gw-token")
	waitFor(t, s, func() bool { return connected(s, "New GW") }, "provisioned gateway not connected")
	g.pub("v1/gateway/connect", `{"device":"Sub 1","type":"thermo"}`)
	g.pub("v1/gateway/telemetry", `{"Sub 1":[{"ts":1000,"values":{"t":21}}]}`)
	g.pub("v1/devices/me/telemetry", `{"up":1}`)
	d, ok := s.Device("Sub 1")
	require.True(t, ok)
	assert.Equal(t, "gw-token", d.Gateway)
	assert.Equal(t, "thermo", d.Profile)
	pt, ok := s.Latest("Sub 1", "t")
	require.True(t, ok)
	assert.Equal(t, int64(21), pt.Value)
	_, ok = s.Latest("New GW", "up")
	assert.True(t, ok)
	gd, _ := s.Device("New GW")
	assert.True(t, gd.IsGateway)
	assert.Equal(t, "sensors", gd.Profile)
}

func TestProvisionPreProvisionedGateway(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithProvisioning(tbtest.ProvisionProfile{Key: "k", Secret: "s",
		Strategy:       tbtest.CheckPreProvisionedDevices,
		PreProvisioned: []tbtest.PreProvisionedDevice{{Name: "Pre GW", AccessToken: "pre-token", Gateway: true}}}))
	_, got := provision(t, s, `{"provisionDeviceKey":"k","provisionDeviceSecret":"s","deviceName":"Pre GW"}`)
	assert.Equal(t, "pre-token", got["credentialsValue"])
	dial(t, s, "pre-token")
	waitFor(t, s, func() bool { return connected(s, "Pre GW") }, "pre-provisioned gateway not connected")
	// The default gateway is still there.
	assert.NotEmpty(t, s.GatewayName(tbtest.DefaultToken))
}
