package tbgateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/netproxy"
	"github.com/thingsgate/tbgateway/tbtest"
)

// upEvents returns an option that records the gateway's connection events
// and a channel that receives the time of each Up.
func upEvents() (tb.Option, <-chan time.Time) {
	ups := make(chan time.Time, 1024)
	return tb.WithConnectionListener(func(e tb.ConnectionEvent) {
		if e.State == tb.StateUp {
			ups <- time.Now()
		}
	}), ups
}

// dataBeforeConnect returns, per connection, the devices of plan whose
// data reached the server before their v1/gateway/connect on that
// connection, in the server's record of the wire order.
func dataBeforeConnect(t *testing.T, srv *tbtest.Server) (bad map[uint64][]string, conns int) {
	t.Helper()
	connected := map[uint64]map[string]bool{}
	bad = map[uint64][]string{}
	for _, m := range srv.Messages() {
		if m.Conn == 0 {
			continue
		}
		seen := connected[m.Conn]
		if seen == nil {
			seen = map[string]bool{}
			connected[m.Conn] = seen
		}
		switch m.Topic {
		case "v1/gateway/connect":
			var c struct{ Device string }
			require.NoError(t, json.Unmarshal(m.Payload, &c))
			seen[c.Device] = true
		case "v1/gateway/telemetry":
			var byDevice map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(m.Payload, &byDevice))
			for d := range byDevice {
				if !seen[d] {
					bad[m.Conn] = append(bad[m.Conn], d)
					seen[d] = true // count a device once per connection
				}
			}
		}
	}
	return bad, len(connected)
}

// TestFaultNoDataBeforeConnect streams through server restarts and
// dropped connections and checks, on every connection the server saw,
// that each device's connect went out before its data, and that nothing
// was lost.
func TestFaultNoDataBeforeConnect(t *testing.T) {
	plan := streamPlan{devices: 40, entries: 10_000, batch: 50}
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(200*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for d := 0; d < plan.devices; d++ {
		_, err := g.Connect(ctx, plan.name(d), tb.WithDeviceProfile("ordered"))
		require.NoError(t, err)
	}
	faults, midStream := plan.streamThroughFaults(ctx, t, g, 10, func(i int) bool {
		if i%2 == 1 {
			return srv.DropConnection(tbtest.DefaultToken)
		}
		require.NoError(t, srv.Restart())
		return true
	})
	plan.verify(t, false, seriesOf(srv))
	bad, conns := dataBeforeConnect(t, srv)
	assert.Empty(t, bad, "data before its device's connect, by connection")
	assert.GreaterOrEqual(t, conns, 9, "connections seen by the server")
	assert.GreaterOrEqual(t, midStream, 8, "faults during the stream")
	for d := 0; d < plan.devices; d++ {
		dev, ok := srv.Device(plan.name(d))
		require.True(t, ok)
		assert.Equal(t, "ordered", dev.Profile, "never created implicitly with the default profile")
	}
	st := g.Stats()
	t.Logf("%d faults (%d mid-stream), %d connections, %d reconnects, %d re-sent, %d announced", faults, midStream, conns, st.Reconnects, st.Resent, st.Announced)
	assert.Empty(t, srv.Rejections())
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
		time.Sleep(5 * time.Second) // up between outages, as the scenario says
		srv.Stop()
		time.Sleep(time.Second)
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
	g, err := tb.Dial(ctxT(t), px.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithKeepAlive(ka), opt,
		tb.WithConnectionListener(func(e tb.ConnectionEvent) {
			if e.State == tb.StateDown {
				down <- time.Now()
			}
		}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = g.Close(context.Background()) })
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
	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithOfflineStart(),
		tb.WithMaxReconnectDelay(300*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { _ = g.Close(context.Background()) })
	assert.Less(t, time.Since(begin), time.Second, "Dial returns at once")
	assert.False(t, g.Connected())

	// Offline, Connect cannot be acknowledged: it stays queued, ahead of
	// the data queued after it.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = g.Connect(short, "early", tb.WithDeviceProfile("boot"))
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
	g, err := tb.Dial(ctxT(t), srv.URL(), tb.WithAccessToken("wrong"), tb.WithOfflineStart(),
		tb.WithMaxReconnectDelay(100*time.Millisecond),
		tb.WithConnectionListener(func(e tb.ConnectionEvent) {
			if e.State == tb.StateReconnecting {
				refused.Add(1)
			}
		}))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return refused.Load() >= 2 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, g.Close(ctxT(t)))
}

// TestPacedFromFirstByte: under tight limits, data published the moment
// Dial returns, for devices new on the connection, is paced by the limits
// the server reported (and the implicit connects are budgeted): the server
// never has to close the connection.
func TestPacedFromFirstByte(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithRateLimits(
		tbtest.RateLimits{Messages: "20:1"},
		tbtest.RateLimits{Messages: "30:1", TelemetryMessages: "20:1", TelemetryDataPoints: "100:1"}))
	g := dialTB(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for d := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := g.Device("paced-" + string(rune('a'+d)))
			for i := range 4 {
				assert.NoError(t, dev.PublishTelemetry(ctx, tb.Entry{TS: int64(i + 1), Values: tb.Values{"n": i}}))
			}
		}()
	}
	wg.Wait()
	assert.Empty(t, srv.Rejections(), "no breach")
	assert.Zero(t, g.Stats().Reconnects, "never disconnected")
	assert.Positive(t, g.Stats().LimitsApplied)
}

// TestCloseInEveryState: Close returns by its context's deadline whatever
// the gateway is doing, and leaves no goroutine behind.
func TestCloseInEveryState(t *testing.T) {
	cases := map[string]func(t *testing.T, srv *tbtest.Server) *tb.Gateway{
		"offline": func(t *testing.T, srv *tbtest.Server) *tb.Gateway {
			srv.Stop()
			g, err := tb.Dial(ctxT(t), srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithOfflineStart())
			require.NoError(t, err)
			require.NoError(t, g.Device("d").PublishTelemetryAsync(ctxT(t), []tb.Entry{{Values: tb.Values{"a": 1}}}, nil))
			return g
		},
		"pacing": func(t *testing.T, srv *tbtest.Server) *tb.Gateway {
			g, err := tb.Dial(ctxT(t), srv.URL(), tb.WithAccessToken(tbtest.DefaultToken),
				tb.WithRateLimits(tb.RateLimits{}, tb.RateLimits{Messages: "1:60"}), tb.WithoutSessionLimits())
			require.NoError(t, err)
			for i := range 5 {
				require.NoError(t, g.Device("d").PublishTelemetryAsync(ctxT(t), []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"a": i}}}, nil))
			}
			return g
		},
		"handler and request pending": func(t *testing.T, srv *tbtest.Server) *tb.Gateway {
			g := dialOwned(t, srv)
			started := make(chan struct{})
			g.OnRPC(tb.RPCHandlerFunc(func(ctx context.Context, _ *tb.RPCRequest) (any, error) {
				close(started)
				<-ctx.Done()
				return nil, ctx.Err()
			}))
			_, err := g.Connect(ctxT(t), "d")
			require.NoError(t, err)
			go func() { _, _ = srv.RPC(context.Background(), "d", "wait", nil) }()
			<-started
			go func() { _, _ = g.Self().Call(context.Background(), "never-answered", nil) }()
			return g
		},
		"announcing": func(t *testing.T, srv *tbtest.Server) *tb.Gateway {
			// Connects are paced: 9 use up the burst, and announcing
			// them again after the cut waits for tokens.
			opt, ups := upEvents()
			g, err := tb.Dial(ctxT(t), srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), opt,
				tb.WithRateLimits(tb.RateLimits{}, tb.RateLimits{Messages: "30:10"}), tb.WithoutSessionLimits())
			require.NoError(t, err)
			<-ups
			for d := range 9 {
				_, err := g.Connect(ctxT(t), "announce-"+string(rune('a'+d)))
				require.NoError(t, err)
			}
			require.True(t, srv.DropConnection(tbtest.DefaultToken))
			<-ups
			require.NoError(t, g.Device("announce-a").PublishTelemetryAsync(ctxT(t), []tb.Entry{{Values: tb.Values{"a": 1}}}, nil))
			return g
		},
		"right after a cut": func(t *testing.T, srv *tbtest.Server) *tb.Gateway {
			g := dialOwned(t, srv)
			require.NoError(t, g.Device("d").PublishTelemetryAsync(ctxT(t), []tb.Entry{{Values: tb.Values{"a": 1}}}, nil))
			require.True(t, srv.DropConnection(tbtest.DefaultToken))
			return g
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			srv := tbtest.NewServer(t)
			opt := goleak.IgnoreCurrent()
			g := setup(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			begin := time.Now()
			err := g.Close(ctx)
			assert.Less(t, time.Since(begin), 2500*time.Millisecond, "Close returns by its deadline")
			if err != nil {
				assert.ErrorIs(t, err, context.DeadlineExceeded)
			}
			srv.Close()
			goleak.VerifyNone(t, opt)
		})
	}
}

func dialOwned(t *testing.T, srv *tbtest.Server) *tb.Gateway {
	t.Helper()
	g, err := tb.Dial(ctxT(t), srv.URL(), tb.WithAccessToken(tbtest.DefaultToken))
	require.NoError(t, err)
	return g
}

// TestSlowCallbackBounded: a callback that blocks slows its own lane and,
// through it, the publishers; no goroutine is spawned per outcome, and
// every outcome is delivered once the callback goes on.
func TestSlowCallbackBounded(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithQueue(1000, 1<<20, tb.OverflowBlock), tb.WithMaxInflight(2))
	release := make(chan struct{})
	var called atomic.Int64
	cb := func(err error) {
		<-release
		assert.NoError(t, err)
		called.Add(1)
	}
	base := runtime.NumGoroutine()
	dev := g.Device("slow")
	accepted := 0
	for i := range 20_000 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := dev.PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"n": i}}}, cb)
		cancel()
		if err != nil {
			require.True(t, errors.Is(err, context.DeadlineExceeded), "the publisher feels the slow callback: %v", err)
			break
		}
		if i == 0 {
			base = runtime.NumGoroutine() // the lane's worker is now stuck in the callback
		}
		accepted++
	}
	// At most the queue, the in-flight window and as many outcomes
	// pending as the queue holds.
	assert.Less(t, accepted, 8000, "publishers were held back")
	assert.Less(t, runtime.NumGoroutine(), base+20, "no goroutine per outcome")
	close(release)
	require.Eventually(t, func() bool { return called.Load() == int64(accepted) }, time.Minute, 5*time.Millisecond,
		"every outcome delivered")
}

// TestRPCDuringOutageAnsweredAfterReconnect: ThingsBoard keeps an RPC to
// a device whose session is closed and sends it once the device is
// announced again (WIRE 10.6); the gateway's re-announcement on the new
// connection brings it, and the handler's answer reaches the caller.
func TestRPCDuringOutageAnsweredAfterReconnect(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(200*time.Millisecond))
	ctx := ctxT(t)
	dev, err := g.Connect(ctx, "valve")
	require.NoError(t, err)
	dev.OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) {
		return map[string]string{"did": r.Method}, nil
	}))
	srv.Stop()
	answer := make(chan json.RawMessage, 1)
	errs := make(chan error, 1)
	go func() {
		r, err := srv.RPC(ctx, "valve", "close", nil)
		errs <- err
		answer <- r
	}()
	require.NoError(t, srv.WaitFor(ctx, func() bool {
		d, ok := srv.Device("valve")
		return ok && d.WaitingRPCs > 0
	}), "the RPC waits for the device's session")
	require.NoError(t, srv.Start())
	require.NoError(t, <-errs)
	assert.JSONEq(t, `{"did":"close"}`, string(<-answer))
}
