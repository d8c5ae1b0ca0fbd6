package tbtest_test

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

func TestDropConnection(t *testing.T) {
	s := tbtest.NewServer(t)
	assert.False(t, s.DropConnection(tbtest.DefaultToken), "not connected")
	assert.False(t, s.DropConnection("unknown"))

	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	g.pub("v1/gateway/connect", `{"device":"B"}`)

	require.True(t, s.DropConnection(tbtest.DefaultToken))
	assert.False(t, connected(s, "A"))
	assert.False(t, connected(s, "B"))
	assert.False(t, connected(s, s.GatewayName(tbtest.DefaultToken)))
	g.waitLost()

	// After reconnecting, sub-devices must be connected again.
	g = dial(t, s, tbtest.DefaultToken)
	assert.False(t, connected(s, "A"))
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	assert.True(t, connected(s, "A"))
}

func TestRestartKeepsAddressAndState(t *testing.T) {
	s := tbtest.NewServer(t)
	addr, url := s.Addr(), s.URL()
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"A","type":"P"}`)
	g.pub("v1/gateway/telemetry", `{"A":[{"ts":1,"values":{"t":1}}]}`)
	s.SetSharedAttributes("A", map[string]any{"s": 1})
	g.next("v1/gateway/attributes")

	require.NoError(t, s.Restart())
	g.waitLost()
	assert.Equal(t, addr, s.Addr())
	assert.Equal(t, url, s.URL())
	d, ok := s.Device("A")
	require.True(t, ok)
	assert.Equal(t, "P", d.Profile)
	assert.False(t, d.Connected, "the server forgot every sub-device session")
	assert.Equal(t, 1, s.TelemetryCount("A"))

	g = dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/telemetry", `{"A":[{"ts":2,"values":{"t":2}}]}`)
	assert.Equal(t, 2, s.TelemetryCount("A"))
	assert.True(t, connected(s, "A"))

	// Stop refuses connections until Start, on the same address.
	s.Stop()
	g.waitLost()
	_, err := tryDial(t, s, tbtest.DefaultToken)
	require.Error(t, err)
	s.Stop() // idempotent
	require.NoError(t, s.Start())
	require.NoError(t, s.Start()) // already running
	assert.Equal(t, addr, s.Addr())
	dial(t, s, tbtest.DefaultToken)

	s.Close()
	s.Close()
	require.ErrorIs(t, s.Start(), tbtest.ErrServerClosed)
	require.ErrorIs(t, s.Restart(), tbtest.ErrServerClosed)
}

func TestWithAddr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	s := tbtest.NewServer(t, tbtest.WithAddr(addr))
	assert.Equal(t, addr, s.Addr())
	assert.Equal(t, "tcp://"+addr, s.URL())
	dial(t, s, tbtest.DefaultToken).pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	require.NoError(t, s.Restart())
	assert.Equal(t, addr, s.Addr())

	// The address is taken: NewServer fails.
	assert.Panics(t, func() { tbtest.NewServer(nil, tbtest.WithAddr(addr)) })
}

func TestStopCutsConnectionsThatNeverSentConnect(t *testing.T) {
	s := tbtest.NewServer(t)
	c, err := net.DialTimeout("tcp", s.Addr(), waitTimeout)
	require.NoError(t, err)
	defer c.Close()
	done := make(chan struct{})
	go func() {
		s.Stop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Stop hangs on a connection without CONNECT")
	}
	buf := make([]byte, 1)
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	_, err = c.Read(buf)
	require.Error(t, err)
	require.NoError(t, s.Start())
}

func TestHoldAcks(t *testing.T) {
	s := tbtest.NewServer(t)
	w, _ := rawConnect(t, s, "hold", tbtest.DefaultToken, nil)

	s.HoldAcks(true)
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"t":1}]}`), 1, 1)
	w.ping() // PINGRESP comes first: no PUBACK
	assert.Equal(t, 1, s.TelemetryCount("A"), "processed while held")
	// Replies that follow a held publish are still sent.
	w.publish("v1/devices/me/rpc/request/1", []byte(`{"method":"getSessionLimits","params":{}}`), 1, 2)
	typ, _, err := w.read()
	require.NoError(t, err)
	assert.Equal(t, byte(0x30), typ, "the getSessionLimits answer, not a PUBACK")

	s.HoldAcks(false)
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"t":2}]}`), 1, 3)
	w.expectPuback(3) // held PUBACKs 1 and 2 are never sent
	assert.Equal(t, 2, s.TelemetryCount("A"))

	// With paho: the publish token does not complete. PUBACKs keep the
	// publish order, so once a later publish is acknowledged the held one
	// would have been too.
	g := dial(t, s, tbtest.DefaultToken)
	s.HoldAcks(true)
	tok := g.pubAsync("v1/gateway/telemetry", `{"A":[{"t":3}]}`)
	waitFor(t, s, func() bool { return s.TelemetryCount("A") == 3 }, "processed while held")
	s.HoldAcks(false)
	g.pub("v1/gateway/telemetry", `{"A":[{"t":4}]}`)
	select {
	case <-tok.Done():
		t.Fatal("the held PUBACK was sent")
	default:
	}
}

func TestDelayAcks(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	s.DelayAcks(150 * time.Millisecond)
	start := time.Now()
	g.pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	assert.GreaterOrEqual(t, time.Since(start), 150*time.Millisecond)
	s.DelayAcks(0)
	g.pub("v1/gateway/telemetry", `{"A":[{"t":2}]}`)

	// A pending delay does not hold up Stop.
	s.DelayAcks(time.Hour)
	tok := g.pubAsync("v1/gateway/telemetry", `{"A":[{"t":3}]}`)
	waitFor(t, s, func() bool { return s.TelemetryCount("A") == 3 }, "processed before the delay")
	stopped := make(chan struct{})
	go func() {
		s.Stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(waitTimeout):
		t.Fatal("Stop waits for a delayed PUBACK")
	}
	tok.Wait()
	require.Error(t, tok.Error(), "no PUBACK: the connection was cut")
}

func TestNewServerWithNilTB(t *testing.T) {
	s := tbtest.NewServer(nil)
	defer s.Close()
	dial(t, s, tbtest.DefaultToken)
}
