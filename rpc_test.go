package tbgateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
	"github.com/thingsgate/tbgateway/tbtest"
)

// RPCs to the devices and to the gateway: the mux, handlers off the
// network goroutine, the lane's bounds, duplicates, and RPCs that wait out
// an outage.

func TestRPCMux(t *testing.T) {
	var mux tb.RPCMux // the zero value is ready
	ctx := context.Background()
	_, err := mux.HandleRPC(ctx, &tb.RPCRequest{Method: "m"})
	require.EqualError(t, err, `no handler for method "m"`)
	require.ErrorIs(t, err, tb.ErrNoHandler)

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

// TestHandlersOffNetworkGoroutine: a panicking handler gets an error reply,
// a blocked handler does not stop other traffic, and a full queue drops and
// counts instead of stalling.
func TestHandlersOffNetworkGoroutine(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	pub := b.Publisher(t)
	g := dial(t, b, tb.WithHandlerQueue(2, 1))
	ctx := ctxT(t)

	mux := tb.NewRPCMux()
	g.OnRPC(mux)
	mux.HandleFunc("panic", func(context.Context, *tb.RPCRequest) (any, error) { panic("boom") })
	pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":1,"method":"panic"}}`)
	sameJSON(t, `{"device":"A","id":1,"data":{"error":"handler panicked: boom"}}`, rpcReply(t, obs, "A", 1))
	assert.Equal(t, uint64(1), g.Stats().HandlerPanics)

	release := make(chan struct{})
	mux.HandleFunc("block", func(ctx context.Context, _ *tb.RPCRequest) (any, error) {
		<-release
		return "late", nil
	})
	// One RPC runs, two wait in the queue, the rest overflow.
	for i := 10; i < 16; i++ {
		pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":`+strconv.Itoa(i)+`,"method":"block"}}`)
	}
	require.Eventually(t, func() bool { return g.Stats().HandlerDropped == 3 }, wait, 5*time.Millisecond)
	assert.Zero(t, g.Stats().Dropped, "a dropped downlink is not an evicted record")

	// The connection still works while the handler is stuck.
	updates := make(chan tb.AttributeUpdate, 1)
	g.OnAttributeUpdate(tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { updates <- u }))
	pub.Publish(t, "v1/gateway/attributes", `{"device":"A","data":{"k":1}}`)
	select {
	case u := <-updates:
		assert.Equal(t, int64(1), u.Values["k"])
	case <-time.After(wait):
		t.Fatal("attribute update stalled behind a blocked RPC handler")
	}
	require.NoError(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	res := make(chan error, 1)
	go func() {
		_, err := g.Device("A").RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"k"}})
		res <- err
	}()
	req := obs.Wait(t, "v1/gateway/attributes/request", 1, wait)[0]
	assert.Contains(t, string(req.Payload), `"key":"k"`)
	pub.Publish(t, "v1/gateway/attributes/response", strings.Replace(string(req.Payload), `"client":true,"key":"k"`, `"value":2`, 1))
	require.NoError(t, <-res)

	close(release)
	// The running one and the two queued ones answer; ids 13-15 were dropped.
	late := func() int {
		n := 0
		for _, m := range obs.Messages("v1/gateway/rpc") {
			if bytes.Contains(m.Payload, []byte(`"data":"late"`)) {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return late() == 3 }, wait, 5*time.Millisecond)
	// A marker behind them in the lane of the one worker: once it is
	// answered, a late answer to a dropped RPC would have been seen.
	mux.HandleFunc("marker", func(context.Context, *tb.RPCRequest) (any, error) { return "marker", nil })
	pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":20,"method":"marker"}}`)
	sameJSON(t, `{"device":"A","id":20,"data":"marker"}`, rpcReply(t, obs, "A", 20))
	assert.Equal(t, 3, late(), "the dropped RPCs were never answered")
}

// TestDuplicateRPCWhileRunning: a second delivery of an RPC whose handler
// still runs is dropped; ids repeat per device, so other devices' id 0 runs.
func TestDuplicateRPCWhileRunning(t *testing.T) {
	b := testbroker.Start(t)
	pub := b.Publisher(t)
	g := dial(t, b)
	var calls atomic.Int32
	release := make(chan struct{})
	g.OnRPC(tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) {
		calls.Add(1)
		<-release
		return nil, nil
	}))
	pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":0,"method":"m"}}`)
	require.Eventually(t, func() bool { return calls.Load() == 1 }, wait, time.Millisecond)
	pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":0,"method":"m"}}`)
	pub.Publish(t, "v1/gateway/rpc", `{"device":"B","data":{"id":0,"method":"m"}}`)
	require.Eventually(t, func() bool { return calls.Load() == 2 }, wait, time.Millisecond)
	close(release)
	require.Eventually(t, func() bool { return g.Stats().Received >= 3 }, wait, time.Millisecond)
	assert.Equal(t, int32(2), calls.Load())
	assert.Equal(t, uint64(1), g.Stats().DuplicateRPCs, "the duplicate is counted")
}

// TestRPCLaneFullAnswersWithError: an RPC that finds its handler lane full
// is answered with an error at once instead of being dropped silently, and
// the lane is bounded in bytes as well as in count.
func TestRPCLaneFullAnswersWithError(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithHandlerQueue(1, 1), tb.WithHandlerQueueBytes(4096))
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "busy")
	require.NoError(t, err)
	started := make(chan struct{}, 4)
	release := make(chan struct{})
	g.OnRPC(tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) {
		started <- struct{}{}
		<-release
		return "done", nil
	}))
	first := make(chan json.RawMessage, 1)
	go func() { r, _ := srv.RPC(ctx, "busy", "work", nil); first <- r }()
	<-started // the one worker is busy
	second := make(chan json.RawMessage, 1)
	before := g.Stats().Received
	go func() { r, _ := srv.RPC(ctx, "busy", "work", map[string]string{"n": "2"}); second <- r }()
	require.Eventually(t, func() bool { return g.Stats().Received > before }, wait, time.Millisecond)
	// The lane holds one job; a third, and a large one, find it full.
	big := strings.Repeat("x", 8192)
	for _, params := range []any{map[string]string{"n": "3"}, map[string]string{"big": big}} {
		r, err := srv.RPC(ctx, "busy", "work", params)
		require.NoError(t, err)
		assert.JSONEq(t, `{"error":"tbgateway: handler queue full"}`, string(r))
	}
	close(release)
	assert.JSONEq(t, `"done"`, string(<-first))
	assert.JSONEq(t, `"done"`, string(<-second))
	assert.Equal(t, uint64(2), g.Stats().HandlerDropped)
	assert.Zero(t, g.Stats().Dropped, "a dropped downlink is not an evicted record")
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
