package tbgateway_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/netproxy"
	"github.com/thingsgate/tbgateway/internal/testbroker"
	"github.com/thingsgate/tbgateway/tbtest"
)

// The connection's life: events, reconnects and what they re-establish,
// half-open links, offline starts and the back-off.

func TestConnectionListener(t *testing.T) {
	srv := tbtest.NewServer(t)
	var mu sync.Mutex
	var states []tb.ConnectionState
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(100*time.Millisecond), tb.WithConnectionListener(func(e tb.ConnectionEvent) {
		mu.Lock()
		states = append(states, e.State)
		mu.Unlock()
		if e.State == tb.StateDown {
			assert.Error(t, e.Err)
		}
	}))
	require.True(t, srv.DropConnection(tbtest.DefaultToken))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) >= 4
	}, wait, 5*time.Millisecond)
	mu.Lock()
	assert.Equal(t, []tb.ConnectionState{tb.StateUp, tb.StateDown, tb.StateReconnecting, tb.StateUp}, states[:4])
	mu.Unlock()
	assert.True(t, g.Connected())
	assert.Equal(t, "reconnecting", tb.StateReconnecting.String())
}

// TestReconnectReannounces cuts the connection (embedded broker, which can
// kick a client) and checks the gateway comes back, subscribes again and
// re-sends connect for every device with its profile.
func TestReconnectReannounces(t *testing.T) {
	t.Setenv(testbroker.EnvBroker, "") // needs the embedded broker's kick
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	pub := b.Publisher(t)
	g := dial(t, b, tb.WithClientID("gw-reconnect"), tb.WithMaxReconnectDelay(200*time.Millisecond))
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "A", tb.WithDeviceProfile("PA"))
	require.NoError(t, err)
	_, err = g.Connect(ctx, "B")
	require.NoError(t, err)
	obs.Wait(t, "v1/gateway/connect", 2, wait)

	lost := make(chan error, 1)
	go func() {
		_, err := g.Self().Call(ctx, "slow", nil)
		lost <- err
	}()
	obs.Wait(t, "v1/devices/me/rpc/request/1", 1, wait)
	require.True(t, b.Kick("gw-reconnect"))
	assert.ErrorIs(t, <-lost, tb.ErrConnectionLost)

	msgs := obs.Wait(t, "v1/gateway/connect", 4, wait)
	var again []string
	for _, m := range msgs[2:] {
		again = append(again, string(m.Payload))
	}
	assert.ElementsMatch(t, []string{`{"device":"A","type":"PA"}`, `{"device":"B"}`}, again)
	require.Eventually(t, func() bool { return g.Stats().Reconnects == 1 }, wait, 5*time.Millisecond)

	// Subscriptions are back: an RPC arrives and is answered.
	g.OnRPC(tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) { return "back", nil }))
	require.Eventually(t, func() bool {
		pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":9,"method":"m"}}`)
		for _, m := range obs.Messages("v1/gateway/rpc") {
			if strings.Contains(string(m.Payload), `"back"`) {
				return true
			}
		}
		return false
	}, wait, 100*time.Millisecond)
}

// TestReannounceAfterServerDrop: after the server drops the connection,
// every device is connected again (with its profile) and gets RPCs and
// attribute updates again.
func TestReannounceAfterServerDrop(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(200*time.Millisecond))
	ctx := ctxT(t)
	names := []string{"A", "B", "C"}
	for _, n := range names {
		d, err := g.Connect(ctx, n, tb.WithDeviceProfile("P-"+n))
		require.NoError(t, err)
		d.OnRPC(tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) { return d.Name(), nil }))
	}
	updates := make(chan tb.AttributeUpdate, 10)
	g.OnAttributeUpdate(tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { updates <- u }))

	for round := 0; round < 3; round++ {
		require.True(t, srv.DropConnection(tbtest.DefaultToken))
		require.NoError(t, srv.WaitFor(ctx, func() bool {
			for _, n := range names {
				if d, ok := srv.Device(n); !ok || !d.Connected {
					return false
				}
			}
			return true
		}), "devices not re-announced in round %d", round)
		for _, n := range names {
			reply, err := srv.RPC(ctx, n, "who", nil)
			require.NoError(t, err)
			assert.Equal(t, `"`+n+`"`, string(reply))
			d, _ := srv.Device(n)
			assert.Equal(t, "P-"+n, d.Profile)
		}
		srv.SetSharedAttributes("B", map[string]any{"round": round})
		assert.Equal(t, int64(round), (<-updates).Values["round"])
	}
	assert.Equal(t, uint64(3), g.Stats().Reconnects)
	assert.Empty(t, srv.Rejections())
}

// TestServerRestart stops and restarts the server on the same address; the
// gateway comes back by itself.
func TestServerRestart(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(200*time.Millisecond))
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "A")
	require.NoError(t, err)
	require.NoError(t, srv.Restart())
	require.NoError(t, srv.WaitFor(ctx, func() bool { d, _ := srv.Device("A"); return d.Connected }))
	require.Eventually(t, g.Connected, wait, 10*time.Millisecond)
	require.NoError(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"after": 1}}))
	_, ok := srv.Latest("A", "after")
	assert.True(t, ok)
}

// TestBackOnlineAfterOutages: five outages 6 s apart, each of about a
// second; after each the gateway is up again within 2 s of the server,
// because the back-off starts over once a connection stayed up.
func TestBackOnlineAfterOutages(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s of outages")
	}
	srv := tbtest.NewServer(t)
	opt, ups := upEvents()
	g := dialTB(t, srv, opt)
	<-ups
	for i := range 5 {
		// The sleeps are the scenario: the link must stay up long
		// enough for the back-off to start over (stableAfter, 2 s), and
		// each outage must last long enough for the back-off to grow.
		time.Sleep(5 * time.Second) // up between outages, as the scenario says
		srv.Stop()
		time.Sleep(time.Second) // the outage
		require.NoError(t, srv.Start())
		back := time.Now()
		select {
		case up := <-ups:
			assert.Less(t, up.Sub(back), 2*time.Second, "outage %d", i+1)
		case <-time.After(10 * time.Second):
			t.Fatalf("outage %d: not back after 10 s", i+1)
		}
	}
	assert.Equal(t, uint64(5), g.Stats().Reconnects)
}

// TestHalfOpenLinkNoticed: a link that silently stops forwarding is cut
// within 1.5 × keep-alive, and what was published meanwhile arrives over
// the next connection.
func TestHalfOpenLinkNoticed(t *testing.T) {
	srv := tbtest.NewServer(t)
	px, err := netproxy.New(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	down := make(chan time.Time, 16)
	opt, _ := upEvents()
	const ka = 2 * time.Second
	g := open(t, px.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithKeepAlive(ka), opt,
		tb.WithConnectionListener(func(e tb.ConnectionEvent) {
			if e.State == tb.StateDown {
				down <- time.Now()
			}
		}))
	ctx := ctxT(t)
	dev, err := g.Connect(ctx, "half-open")
	require.NoError(t, err)

	px.Blackhole(true)
	cut := time.Now()
	sent := make(chan error, 1)
	go func() { sent <- dev.PublishTelemetry(ctx, tb.Entry{TS: 1, Values: tb.Values{"n": 1}}) }()
	var noticed time.Time
	select {
	case noticed = <-down:
	case <-time.After(4 * ka):
		t.Fatal("a dead link was never noticed")
	}
	assert.LessOrEqual(t, noticed.Sub(cut), ka*3/2+ka/4, "noticed within 1.5 × keep-alive (and a check's granularity)")
	px.Blackhole(false)
	require.NoError(t, <-sent, "the point went over the next connection")
	// The proxy held the first copy and delivers it late: at least once.
	assert.GreaterOrEqual(t, srv.TelemetryCount("half-open"), 1)
	assert.Equal(t, uint64(1), g.Stats().HalfOpen)
}

// TestOfflineStart: with WithOfflineStart, Dial returns while the server is
// down; what is published and connected meanwhile is sent once it is up.
func TestOfflineStart(t *testing.T) {
	srv := tbtest.NewServer(t)
	srv.Stop()
	ctx := ctxT(t)
	begin := time.Now()
	g := dialTB(t, srv, tb.WithOfflineStart(), tb.WithMaxReconnectDelay(300*time.Millisecond))
	assert.Less(t, time.Since(begin), time.Second, "Dial returns at once")
	assert.False(t, g.Connected())

	// Offline, Connect cannot be acknowledged: it stays queued, ahead of
	// the data queued after it.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := g.Connect(short, "early", tb.WithDeviceProfile("boot"))
	cancel()
	require.ErrorIs(t, err, tb.ErrEnqueued)
	var acks sync.WaitGroup
	for i := range 100 {
		acks.Add(1)
		require.NoError(t, g.Device("early").PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"n": i}}}, func(err error) {
			assert.NoError(t, err)
			acks.Done()
		}))
	}
	assert.Equal(t, 0, srv.TelemetryCount("early"))
	require.NoError(t, srv.Start())
	acks.Wait()
	assert.Equal(t, 100, srv.TelemetryCount("early"))
	d, ok := srv.Device("early")
	require.True(t, ok)
	assert.Equal(t, "boot", d.Profile, "connected before its data, with its profile")
}

// TestOfflineStartBadCredentials: refused credentials do not end an
// offline start; they are reported to the listener and retried.
func TestOfflineStartBadCredentials(t *testing.T) {
	srv := tbtest.NewServer(t)
	var refused atomic.Int32
	g := openOwned(t, srv.URL(), tb.WithAccessToken("wrong"), tb.WithOfflineStart(),
		tb.WithMaxReconnectDelay(100*time.Millisecond),
		tb.WithConnectionListener(func(e tb.ConnectionEvent) {
			if e.State == tb.StateReconnecting {
				refused.Add(1)
			}
		}))
	require.Eventually(t, func() bool { return refused.Load() >= 2 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, g.Close(ctxT(t)))
}
