package tbgateway_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

// verbs is the verb set every device handle has: the test runs it on a
// device behind the gateway and on the gateway's own device API.
type verbs interface {
	PublishTelemetry(ctx context.Context, entries ...tb.Entry) error
	PublishTelemetryAsync(ctx context.Context, entries []tb.Entry, done func(error)) error
	PublishAttributes(ctx context.Context, v tb.Values) error
	PublishAttributesAsync(ctx context.Context, v tb.Values, done func(error)) error
	RequestAttributes(ctx context.Context, keys tb.AttributeKeys) (tb.AttributeValues, error)
	Claim(ctx context.Context, c tb.ClaimRequest) error
	OnRPC(h tb.RPCHandler)
	OnAttributeUpdate(h tb.AttributeHandler)
}

var (
	_ verbs = (*tb.Device)(nil)
	_ verbs = (*tb.GatewayDevice)(nil)
)

// TestHandlesShareTheVerbs: each verb of a Device and of the gateway's own
// handle puts the same data on its own topic family, async calls
// included.
func TestHandlesShareTheVerbs(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	g := dial(t, b)
	ctx := ctxT(t)
	for _, c := range []struct {
		name              string
		h                 verbs
		telemetry, attrs  string
		claim             string
		wantTel, wantAttr string
		wantClaim         string
	}{
		{"device", g.Device("D"), "v1/gateway/telemetry", "v1/gateway/attributes", "v1/gateway/claim",
			`{"D":[{"ts":1,"values":{"t":1}}]}`, `{"D":{"fw":"1.0"}}`, `{"D":{"secretKey":"s","durationMs":1000}}`},
		{"self", g.Self(), "v1/devices/me/telemetry", "v1/devices/me/attributes", "v1/devices/me/claim",
			`{"ts":1,"values":{"t":1}}`, `{"fw":"1.0"}`, `{"secretKey":"s","durationMs":1000}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			entry := tb.Entry{TS: 1, Values: tb.Values{"t": 1}}
			require.NoError(t, c.h.PublishTelemetry(ctx, entry))
			done := make(chan error, 2)
			require.NoError(t, c.h.PublishTelemetryAsync(ctx, []tb.Entry{entry}, func(err error) { done <- err }))
			require.NoError(t, c.h.PublishAttributes(ctx, tb.Values{"fw": "1.0"}))
			require.NoError(t, c.h.PublishAttributesAsync(ctx, tb.Values{"fw": "1.0"}, func(err error) { done <- err }))
			require.NoError(t, <-done)
			require.NoError(t, <-done)
			require.NoError(t, c.h.Claim(ctx, tb.ClaimRequest{SecretKey: "s", Duration: time.Second}))
			for _, m := range obs.Wait(t, c.telemetry, 2, wait) {
				sameJSON(t, c.wantTel, m.Payload)
			}
			for _, m := range obs.Wait(t, c.attrs, 2, wait) {
				sameJSON(t, c.wantAttr, m.Payload)
			}
			sameJSON(t, c.wantClaim, obs.Wait(t, c.claim, 1, wait)[0].Payload)
		})
	}
}

// TestHandlerPrecedence: a device's own handler takes every RPC and
// update of that device; the gateway-wide one the others; the gateway's
// own handle is never served by the gateway-wide one.
func TestHandlerPrecedence(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	pub := b.Publisher(t)
	g := dial(t, b)
	answer := func(s string) tb.RPCHandler {
		return tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) { return s, nil })
	}
	updates := make(chan string, 4)
	update := func(s string) tb.AttributeHandler {
		return tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { updates <- s + ":" + u.Device })
	}
	g.OnRPC(answer("gateway-wide"))
	g.OnAttributeUpdate(update("gateway-wide"))
	g.Device("Own").OnRPC(answer("own"))
	g.Device("Own").OnAttributeUpdate(update("own"))

	pub.Publish(t, "v1/gateway/rpc", `{"device":"Own","data":{"id":1,"method":"m"}}`)
	pub.Publish(t, "v1/gateway/rpc", `{"device":"Other","data":{"id":1,"method":"m"}}`)
	sameJSON(t, `{"device":"Own","id":1,"data":"own"}`, rpcReply(t, obs, "Own", 1))
	sameJSON(t, `{"device":"Other","id":1,"data":"gateway-wide"}`, rpcReply(t, obs, "Other", 1))
	pub.Publish(t, "v1/gateway/attributes", `{"device":"Own","data":{"k":1}}`)
	assert.Equal(t, "own:Own", <-updates)
	pub.Publish(t, "v1/gateway/attributes", `{"device":"Other","data":{"k":1}}`)
	assert.Equal(t, "gateway-wide:Other", <-updates)

	// The gateway's own RPC has no handler: answered with an error.
	pub.Publish(t, "v1/devices/me/rpc/request/7", `{"method":"m"}`)
	sameJSON(t, `{"error":"no handler for method \"m\""}`, obs.Wait(t, "v1/devices/me/rpc/response/7", 1, wait)[0].Payload)

	// nil removes the device's own handler: the gateway-wide one answers.
	g.Device("Own").OnRPC(nil)
	pub.Publish(t, "v1/gateway/rpc", `{"device":"Own","data":{"id":2,"method":"m"}}`)
	sameJSON(t, `{"device":"Own","id":2,"data":"gateway-wide"}`, rpcReply(t, obs, "Own", 2))
}
