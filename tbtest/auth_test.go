package tbtest_test

import (
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

func TestConnectAcceptsKnownToken(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	require.True(t, g.c.IsConnectionOpen())

	name := s.GatewayName(tbtest.DefaultToken)
	assert.Equal(t, "Gateway "+tbtest.DefaultToken, name)
	d, ok := s.Device(name)
	require.True(t, ok)
	assert.True(t, d.IsGateway)
	assert.True(t, d.Connected)
	assert.Equal(t, "default", d.Profile)
	assert.Empty(t, s.Rejections())
}

func TestConnackSessionPresentIsNotCleanSession(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken, func(o *paho.ClientOptions) { o.SetCleanSession(false) })
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	g.c.Disconnect(0)
	waitFor(t, s, func() bool { return !connected(s, "A") }, "session closed")

	// sessionPresent is set although the server kept nothing.
	c := paho.NewClient(paho.NewClientOptions().AddBroker(s.URL()).SetClientID("persistent").
		SetUsername(tbtest.DefaultToken).SetCleanSession(false).SetAutoReconnect(false))
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(waitTimeout))
	require.NoError(t, tok.Error())
	defer c.Disconnect(0)
	assert.True(t, tok.(*paho.ConnectToken).SessionPresent())
	assert.False(t, connected(s, "A"))
}

func TestConnectRefusalCodes(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithGateway("tok-1"))
	pw := "secret"

	cases := []struct {
		name     string
		clientID string
		user     string
		password *string
		code     byte
	}{
		{"unknown token", "c1", "nope", nil, 5},
		{"unknown token without client id", "", "nope", nil, 5},
		{"empty username with client id", "c2", "", nil, 2},
		{"empty username and client id", "", "", nil, 5},
		{"unknown token with a password", "c5", "nope", &pw, 5},
		{"unknown token with a password, no client id", "", "nope", &pw, 5},
		{"known token", "c4", "tok-1", nil, 0},
		// WIRE §10.3: the token as user name, any password, any client id.
		{"known token with a password", "c3", "tok-1", &pw, 0},
		{"known token with a password, no client id", "", "tok-1", &pw, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, code := rawConnect(t, s, tc.clientID, tc.user, tc.password)
			assert.Equal(t, tc.code, code)
			if tc.code != 0 {
				w.expectClosed()
				r := lastRejection(t, s)
				assert.True(t, r.Closed)
				assert.Equal(t, tc.user, r.Username)
				assert.Contains(t, r.Reason, "CONNACK refused")
			}
		})
	}
}

func TestConnectRefusedWithPaho(t *testing.T) {
	s := tbtest.NewServer(t)
	_, err := tryDial(t, s, "wrong-token")
	require.ErrorIs(t, err, packets.ErrorRefusedNotAuthorised)
}

func TestRefuseConnections(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken) // existing connections are kept

	s.RefuseConnections(time.Minute)
	_, err := tryDial(t, s, tbtest.DefaultToken)
	require.ErrorIs(t, err, packets.ErrorRefusedServerUnavailable)
	_, code := rawConnect(t, s, "raw", tbtest.DefaultToken, nil)
	assert.Equal(t, byte(3), code)
	assert.True(t, g.c.IsConnectionOpen())

	s.RefuseConnections(0)
	dial(t, s, tbtest.DefaultToken)
}

func TestSecondConnectionWithSameTokenEvictsFirst(t *testing.T) {
	s := tbtest.NewServer(t)
	first := dial(t, s, tbtest.DefaultToken)
	first.pub("v1/gateway/connect", `{"device":"A"}`)
	require.True(t, connected(s, "A"))

	second := dial(t, s, tbtest.DefaultToken)
	first.waitLost()
	assert.False(t, connected(s, "A"), "the old connection's sub-device sessions are gone")
	assert.True(t, connected(s, s.GatewayName(tbtest.DefaultToken)))
	second.pub("v1/gateway/connect", `{"device":"A"}`)
	assert.True(t, connected(s, "A"))
}

func TestTLS(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithTLS())
	require.Regexp(t, `^ssl://127\.0\.0\.1:\d+$`, s.URL())
	require.NotNil(t, s.TLSConfig())
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	p, ok := s.Latest("A", "t")
	require.True(t, ok)
	assert.Equal(t, int64(1), p.Value)

	plain := tbtest.NewServer(t)
	assert.Nil(t, plain.TLSConfig())
	assert.Regexp(t, `^tcp://127\.0\.0\.1:\d+$`, plain.URL())
}

func TestSeveralGateways(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithGateway("g1"), tbtest.WithNamedGateway("Edge 2", "g2"))
	g1 := dial(t, s, "g1")
	g2 := dial(t, s, "g2")
	_, err := tryDial(t, s, tbtest.DefaultToken)
	require.Error(t, err, "the default gateway exists only without gateway options")

	g1.pub("v1/gateway/connect", `{"device":"A"}`)
	g2.pub("v1/gateway/connect", `{"device":"B"}`)
	a, _ := s.Device("A")
	b, _ := s.Device("B")
	assert.Equal(t, "g1", a.Gateway)
	assert.Equal(t, "g2", b.Gateway)
	assert.Equal(t, "Edge 2", s.GatewayName("g2"))

	// One session per device: connecting A through g2 moves its session.
	g2.pub("v1/gateway/connect", `{"device":"A"}`)
	a, _ = s.Device("A")
	assert.Equal(t, "g2", a.Gateway)
	s.SetSharedAttributes("A", map[string]any{"k": 1})
	m := g2.next("v1/gateway/attributes")
	assert.JSONEq(t, `{"device":"A","data":{"k":1}}`, string(m.Payload()))
	assert.Equal(t, 0, g1.received("v1/gateway/attributes"))

	names := []string{}
	for _, d := range s.Devices() {
		names = append(names, d.Name)
	}
	assert.Equal(t, []string{"A", "B", "Edge 2", "Gateway g1"}, names)
}
