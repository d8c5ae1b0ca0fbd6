package tbgateway_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

func dialTB(t *testing.T, srv *tbtest.Server, opts ...tb.Option) *tb.Gateway {
	t.Helper()
	g, err := tb.Dial(ctxT(t), srv.URL(), append([]tb.Option{tb.WithAccessToken(tbtest.DefaultToken)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = g.Close(context.Background()) })
	return g
}

// TestEveryCallAcceptedByServer runs every public operation against the
// fake ThingsBoard, which closes the connection on anything the real server
// rejects, and checks the server stored what was meant, typed as the real
// server types it.
func TestEveryCallAcceptedByServer(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv)
	ctx := ctxT(t)

	a, err := g.Connect(ctx, "A", tb.WithDeviceProfile("Sensor A"))
	require.NoError(t, err)
	_, err = g.Connect(ctx, "A") // an existing device keeps its profile
	require.NoError(t, err)
	all := tb.Values{"s": "value1", "b": true, "f": 3.0, "i": 4, "j": map[string]any{"n": 42, "arr": []any{1, 2}}, "num": "42"}
	require.NoError(t, a.PublishTelemetry(ctx, tb.Entry{TS: 10000, Values: all}, tb.Entry{Values: tb.Values{"flat": 1.5}}))
	require.NoError(t, g.PublishTelemetry(ctx, tb.Telemetry{"B": {{TS: 5, Values: tb.Values{"x": 1},
		Metadata: &tb.Metadata{Connector: "modbus", ReceivedAt: time.UnixMilli(1)}}}}))
	require.NoError(t, a.PublishAttributes(ctx, tb.Values{"fw": "v1.0", "n": 2}))
	require.NoError(t, g.PublishAttributes(ctx, tb.Attributes{"A": {"m": 1.0}, "B": {"m": 2}}))
	srv.SetSharedAttributes("A", map[string]any{"sh": 7, "sh2": "x"})

	v, err := a.RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"fw", "n", "missing"}, Shared: []string{"sh"}})
	require.NoError(t, err)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{"fw": "v1.0", "n": int64(2)}, Shared: tb.Values{"sh": int64(7)}}, v)
	v, err = a.RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"nothing"}})
	require.NoError(t, err)
	assert.Empty(t, v.Client)
	v, err = a.RequestAttributes(ctx, tb.AttributeKeys{Shared: []string{"a,b"}}) // asked for literally
	require.NoError(t, err)
	assert.Empty(t, v.Shared)

	require.NoError(t, g.Claim(ctx, map[string]tb.ClaimRequest{"A": {SecretKey: "k", Duration: 90 * time.Second}, "B": {}}))
	require.NoError(t, g.Self().PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"cpu": 12.5}}))
	require.NoError(t, g.Self().PublishAttributes(ctx, tb.Values{"version": "v0.1"}))
	srv.SetGatewaySharedAttributes(tbtest.DefaultToken, map[string]any{"poll": 5})
	own, err := g.Self().RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"version"}, Shared: []string{"poll"}})
	require.NoError(t, err)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{"version": "v0.1"}, Shared: tb.Values{"poll": int64(5)}}, own)
	limits, err := g.Self().SessionLimits(ctx)
	require.NoError(t, err)
	assert.Equal(t, 65536, limits.MaxPayloadSize)
	require.NoError(t, g.Self().Claim(ctx, tb.ClaimRequest{SecretKey: "gw"}))

	a.OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) { return r.Params, nil }))
	reply, err := srv.RPC(ctx, "A", "echo", map[string]any{"pin": 1})
	require.NoError(t, err)
	assert.JSONEq(t, `{"pin":1}`, string(reply))
	require.NoError(t, g.Disconnect(ctx, "A"))

	// The server's view.
	d, ok := srv.Device("A")
	require.True(t, ok)
	assert.Equal(t, "Sensor A", d.Profile)
	assert.False(t, d.Connected)
	b, _ := srv.Device("B")
	assert.Equal(t, "default", b.Profile, "implicit creation by data")
	for key, want := range map[string]any{"s": "value1", "b": true, "f": 3.0, "i": int64(4), "num": int64(42), "j": json.RawMessage(`{"arr":[1,2],"n":42}`)} {
		p, ok := srv.Latest("A", key)
		require.True(t, ok, key)
		assert.Equal(t, want, p.Value, key)
		assert.Equal(t, int64(10000), p.TS, key)
	}
	flat, _ := srv.Latest("A", "flat")
	assert.Greater(t, flat.TS, int64(10000), "flat entries are stored at server time")
	assert.Equal(t, map[string]any{"fw": "v1.0", "n": int64(2), "m": 1.0}, srv.ClientAttributes("A"))
	assert.Equal(t, []tbtest.Claim{{SecretKey: "k", DurationMs: 90000}}, srv.Claims("A"))
	assert.Equal(t, []tbtest.Claim{{DurationMs: 86400000}}, srv.Claims("B"), "server default duration")
	assert.Empty(t, srv.Rejections(), "the SDK sent something the server rejects")
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
