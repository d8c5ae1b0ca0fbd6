package tbgateway_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

func TestRPCMux(t *testing.T) {
	var mux tb.RPCMux // the zero value is ready
	ctx := context.Background()
	_, err := mux.HandleRPC(ctx, &tb.RPCRequest{Method: "m"})
	require.EqualError(t, err, `no handler for method "m"`)

	mux.HandleFunc("m", func(context.Context, *tb.RPCRequest) (any, error) { return "m", nil })
	got, err := mux.HandleRPC(ctx, &tb.RPCRequest{Method: "m"})
	require.NoError(t, err)
	assert.Equal(t, "m", got)
	_, err = mux.HandleRPC(ctx, &tb.RPCRequest{Method: "other"})
	require.Error(t, err, "no default yet")

	mux.HandleFunc("", func(_ context.Context, r *tb.RPCRequest) (any, error) { return "default " + r.Method, nil })
	got, err = mux.HandleRPC(ctx, &tb.RPCRequest{Method: "other"})
	require.NoError(t, err)
	assert.Equal(t, "default other", got)

	mux.Handle("m", nil)
	got, err = mux.HandleRPC(ctx, &tb.RPCRequest{Method: "m"})
	require.NoError(t, err)
	assert.Equal(t, "default m", got, "removed: the default answers")
}

// TestNoticeThroughMux: a device notice to the gateway is acted on and
// answered with success even when the gateway's own handler is a mux that
// does not know the method.
func TestNoticeThroughMux(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/devices/me/rpc/response/#")
	pub := b.Publisher(t)
	g := dial(t, b)
	mux := tb.NewRPCMux()
	mux.HandleFunc("ping", func(context.Context, *tb.RPCRequest) (any, error) { return "pong", nil })
	g.Self().OnRPC(mux)
	pub.Publish(t, "v1/devices/me/rpc/request/3", `{"method":"gateway_device_deleted","params":"X"}`)
	sameJSON(t, `{"success":true}`, obs.Wait(t, "v1/devices/me/rpc/response/3", 1, wait)[0].Payload)
	pub.Publish(t, "v1/devices/me/rpc/request/4", `{"method":"ping"}`)
	sameJSON(t, `"pong"`, obs.Wait(t, "v1/devices/me/rpc/response/4", 1, wait)[0].Payload)
}
