package tbgateway_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

// Routing what the server sends: whatever arrives on a downlink topic is
// decoded or counted and dropped, never trusted.

// TestHostileDownlinks sends malformed messages on every downlink topic:
// each is counted and dropped, and the gateway keeps serving.
func TestHostileDownlinks(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	pub := b.Publisher(t)
	g := dial(t, b)
	ctx := ctxT(t)
	var handled atomic.Int32
	g.OnRPC(tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) {
		handled.Add(1)
		return nil, nil
	}))
	g.OnAttributeUpdate(tb.AttributeHandlerFunc(func(context.Context, tb.AttributeUpdate) { handled.Add(1) }))
	bad := []struct{ topic, payload string }{
		{"v1/gateway/rpc", `{`},
		{"v1/gateway/rpc", `[]`},
		{"v1/gateway/rpc", `{"device":"A"}`},
		{"v1/gateway/rpc", `{"device":"A","data":{"method":"m"}}`},
		{"v1/gateway/rpc", `{"device":"A","data":{"id":"x","method":"m"}}`},
		{"v1/gateway/rpc", `{"device":"","data":{"id":1,"method":"m"}}`},
		{"v1/gateway/attributes", `nope`},
		{"v1/gateway/attributes", `{"device":"A","data":[1]}`},
		{"v1/gateway/attributes", `{"device":5,"data":{}}`},
		{"v1/gateway/attributes/response", `{"id":1}`},
		{"v1/gateway/attributes/response", `{"id":1.5,"device":"A"}`},
		{"v1/gateway/attributes/response", `{"id":99999999999,"device":"A"}`},
		{"v1/gateway/attributes/response", `{"id":1,"device":"A","values":3}`},
		{"v1/gateway/attributes/response", string(bytes.Repeat([]byte("["), 100000))},
		{"v1/devices/me/attributes", `"str"`},
		{"v1/devices/me/rpc/request/abc", `{"method":"m"}`},
		{"v1/devices/me/rpc/request/1", `{"params":1}`},
		{"v1/devices/me/rpc/response/x", `{}`},
		{"v1/devices/me/attributes/response/x", `{}`},
	}
	for _, m := range bad {
		pub.Publish(t, m.topic, m.payload)
	}
	require.Eventually(t, func() bool { return g.Stats().Malformed == uint64(len(bad)) }, wait, 5*time.Millisecond)
	assert.Zero(t, handled.Load())

	// Still alive: a good RPC is answered and a publish goes through.
	pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":7,"method":"m"}}`)
	sameJSON(t, `{"device":"A","id":7,"data":{"success":true}}`, rpcReply(t, obs, "A", 7))
	require.NoError(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"ok": true}}))
	assert.True(t, g.Connected())
}
