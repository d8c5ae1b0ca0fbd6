package tbgateway_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// Devices behind the gateway: their names, ThingsBoard's notices about
// them, and the refresh that keeps a quiet device's session open.

// TestDeviceRenamedAndDeleted: ThingsBoard's own notices keep the gateway
// in step: a renamed device goes on under its new name (handlers and
// handles included), a deleted one is forgotten, and the application is
// told.
func TestDeviceRenamedAndDeleted(t *testing.T) {
	srv := tbtest.NewServer(t)
	events := make(chan tb.DeviceEvent, 4)
	g := dialTB(t, srv, tb.WithDeviceListener(func(e tb.DeviceEvent) { events <- e }))
	ctx := ctxT(t)
	dev, err := g.Connect(ctx, "Old", tb.WithDeviceProfile("P"))
	require.NoError(t, err)
	dev.OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) { return r.Device, nil }))

	srv.NotifyDeviceRenamed("Old", "New")
	assert.Equal(t, tb.DeviceEvent{Kind: tb.DeviceRenamed, Device: "Old", NewName: "New"}, <-events)
	assert.Equal(t, "New", dev.Name())
	assert.Equal(t, []tb.DeviceInfo{{Name: "New", Profile: "P"}}, g.Devices())
	require.NoError(t, dev.PublishTelemetry(ctx, tb.Entry{TS: 1, Values: tb.Values{"t": 1}}))
	_, ok := srv.Latest("New", "t")
	assert.True(t, ok, "data goes under the new name")
	_, ok = srv.Latest("Old", "t")
	assert.False(t, ok)
	require.NoError(t, srv.WaitFor(ctx, func() bool { d, _ := srv.Device("New"); return d.Connected }))
	reply, err := srv.RPC(ctx, "New", "who", nil)
	require.NoError(t, err)
	assert.Equal(t, `"New"`, string(reply))

	srv.NotifyDeviceDeleted("New")
	assert.Equal(t, tb.DeviceEvent{Kind: tb.DeviceDeleted, Device: "New"}, <-events)
	assert.Empty(t, g.Devices())
	assert.Empty(t, srv.Rejections())
}

// TestDeviceHandleName: a handle quotes its name once for all its calls;
// names that need escaping arrive as they were given.
func TestDeviceHandleName(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv)
	ctx := ctxT(t)
	for _, name := range []string{`Pump "7"`, "Line\u2028Sep", "Tab\there", "Ünïcode ✓", `back\slash`} {
		d := g.Device(name)
		require.NoError(t, d.PublishTelemetry(ctx, tb.Entry{TS: 1, Points: []tb.Point{tb.Int("n", 1)}}))
		require.NoError(t, d.PublishTelemetryAsync(ctx, []tb.Entry{{TS: 2, Points: []tb.Point{tb.Int("n", 2)}}}, nil))
		require.NoError(t, srv.WaitFor(ctx, func() bool { return srv.TelemetryCount(name) == 2 }), name)
	}
	assert.Empty(t, srv.Rejections())
}

// TestSessionRefresh: a device that sends nothing is announced again before
// ThingsBoard's inactivity timeout would close its session.
func TestSessionRefresh(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithSessionRefresh(time.Second))
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "Quiet", tb.WithDeviceProfile("P"))
	require.NoError(t, err)
	busy, err := g.Connect(ctx, "Busy")
	require.NoError(t, err)
	connects := func(name string) int {
		n := 0
		for _, m := range srv.Messages() {
			if m.Topic == "v1/gateway/connect" && string(m.Payload) == `{"device":"`+name+`"`+map[bool]string{true: `,"type":"P"}`, false: "}"}[name == "Quiet"] {
				n++
			}
		}
		return n
	}
	// Busy sends every 100 ms until Quiet has been announced again twice,
	// over more than a refresh interval: a refresh of Busy, were its
	// traffic not seen, would have been queued by then, and the last
	// publish, queued behind it, is the barrier that it reached the
	// server.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	for connects("Quiet") < 3 {
		select {
		case <-tick.C:
			require.NoError(t, busy.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"x": 1}}))
		case <-deadline:
			t.Fatalf("the quiet device was announced %d times", connects("Quiet"))
		}
	}
	require.NoError(t, busy.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"x": 1}}))
	assert.Equal(t, 1, connects("Busy"), "a device with traffic needs no refresh")
	assert.GreaterOrEqual(t, g.Stats().Refreshed, uint64(2))
}

// TestSessionRefreshAfterFullQueue: a refresh that finds the queue full
// (OverflowFailFast) is skipped and logged, and the refreshes go on once
// there is room again.
func TestSessionRefreshAfterFullQueue(t *testing.T) {
	srv := tbtest.NewServer(t)
	logOpt, skipped, skipErr := logSignal("tbgateway: session refresh skipped")
	down := make(chan struct{}, 16)
	g := dialTB(t, srv, logOpt, tb.WithQueue(1, 1<<20, tb.OverflowFailFast), tb.WithSessionRefresh(time.Second),
		tb.WithMaxReconnectDelay(100*time.Millisecond), tb.WithConnectionListener(func(e tb.ConnectionEvent) {
			if e.State == tb.StateDown {
				down <- struct{}{}
			}
		}))
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "Quiet")
	require.NoError(t, err)

	// The server goes away, and the one place in the queue is taken.
	srv.Stop()
	select {
	case <-down:
	case <-time.After(wait):
		t.Fatal("no Down event")
	}
	if err := g.Device("Filler").PublishTelemetryAsync(ctx, []tb.Entry{{Values: tb.Values{"n": 1}}}, nil); err != nil {
		require.ErrorIs(t, err, tb.ErrQueueFull, "a refresh came first and took the place: full all the same")
	}
	select {
	case <-skipped:
	case <-time.After(wait):
		t.Fatal("no refresh was skipped")
	}
	require.ErrorIs(t, *skipErr, tb.ErrQueueFull)
	before := g.Stats().Refreshed // nothing can enter the queue until the server is back

	// Room again: the quiet device is refreshed again.
	require.NoError(t, srv.Start())
	require.Eventually(t, func() bool { return g.Stats().Refreshed > before }, wait, 10*time.Millisecond,
		"the refresh stopped after a skipped round")
}
