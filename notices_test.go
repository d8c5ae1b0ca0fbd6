package tbgateway_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

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
	stop := time.After(2500 * time.Millisecond)
loop:
	for {
		select {
		case <-stop:
			break loop
		case <-time.After(100 * time.Millisecond):
			require.NoError(t, busy.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"x": 1}}))
		}
	}
	assert.GreaterOrEqual(t, connects("Quiet"), 2, "the quiet device is announced again")
	assert.Equal(t, 1, connects("Busy"), "a device with traffic needs no refresh")
	assert.GreaterOrEqual(t, g.Stats().Refreshed, uint64(1))
}
