package tbgateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
	"github.com/thingsgate/tbgateway/tbtest"
)

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
		pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":`+itoa(i)+`,"method":"block"}}`)
	}
	require.Eventually(t, func() bool { return g.Stats().HandlerDropped == 3 }, wait, 5*time.Millisecond)

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
	time.Sleep(50 * time.Millisecond)
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
}

func TestPayloadTooLarge(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/gateway/telemetry")
	g := dial(t, b, tb.WithMaxPayloadSize(1024))
	ctx := ctxT(t)
	// Remaining length = 2 + len(topic) + 2 (packet id) + payload; find the
	// largest string that fits exactly.
	payloadFor := func(n int) int { return len(`{"D":[{"s":""}]}`) + n }
	limit := 1024 - 2 - len("v1/gateway/telemetry") - 2
	n := limit - payloadFor(0)
	require.NoError(t, g.Device("D").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"s": strings.Repeat("x", n)}}))
	err := g.Device("D").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"s": strings.Repeat("x", n+1)}})
	var pe *tb.PayloadTooLargeError
	require.ErrorAs(t, err, &pe)
	assert.ErrorIs(t, err, tb.ErrPayloadTooLarge)
	assert.Equal(t, 1025, pe.Size)
	assert.Equal(t, 1024, pe.Limit)
	require.NoError(t, g.Device("D").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"after": 1}}))
	msgs := obs.Wait(t, "v1/gateway/telemetry", 2, wait)
	assert.Len(t, msgs[0].Payload, limit)
	assert.Contains(t, string(msgs[1].Payload), "after")
}

func TestInvalidInputSendsNothing(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	g := dial(t, b)
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "")
	assert.ErrorIs(t, err, tb.ErrInvalidDeviceName)
	assert.ErrorIs(t, g.Disconnect(ctx, ""), tb.ErrInvalidDeviceName)
	assert.ErrorIs(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{TS: 1, Values: tb.Values{"t": math.NaN()}}), tb.ErrInvalidValue)
	assert.ErrorIs(t, g.Device("A").PublishTelemetry(ctx), tb.ErrNoData)
	assert.ErrorIs(t, g.PublishTelemetry(ctx, tb.Telemetry{"": {{Values: tb.Values{"a": 1}}}}), tb.ErrInvalidDeviceName)
	assert.ErrorIs(t, g.PublishAttributes(ctx, tb.Attributes{"A": {}}), tb.ErrNoData)
	assert.ErrorIs(t, g.PublishAttributes(ctx, nil), tb.ErrNoData)
	assert.ErrorIs(t, g.Device("A").PublishAttributes(ctx, tb.Values{"x": make(chan int)}), tb.ErrUnsupportedType)
	_, err = g.Device("A").RequestAttributes(ctx, tb.AttributeKeys{})
	assert.ErrorIs(t, err, tb.ErrNoData)
	_, err = g.Device("A").RequestAttributes(ctx, tb.AttributeKeys{Client: []string{""}})
	assert.ErrorIs(t, err, tb.ErrInvalidKey)
	_, err = g.Self().RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"a,b"}})
	assert.ErrorIs(t, err, tb.ErrInvalidKey)
	assert.ErrorIs(t, g.Claim(ctx, map[string]tb.ClaimRequest{"A": {Duration: -time.Second}}), tb.ErrInvalidValue)
	_, err = g.Self().Call(ctx, "", nil)
	assert.ErrorIs(t, err, tb.ErrInvalidValue)
	_, err = g.Self().Call(ctx, "m", math.Inf(1))
	assert.ErrorIs(t, err, tb.ErrInvalidValue)
	// Give a wrongly sent message time to show up before asserting none did.
	require.NoError(t, g.Device("marker").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"m": 1}}))
	msgs := obs.Wait(t, "", 1, wait)
	require.Len(t, msgs, 1)
	assert.Contains(t, string(msgs[0].Payload), "marker")
}

func TestRequestTimeoutAndCancel(t *testing.T) {
	b := testbroker.Start(t)
	g := dial(t, b, tb.WithRequestTimeout(100*time.Millisecond))
	_, err := g.Device("A").RequestAttributes(context.Background(), tb.AttributeKeys{Client: []string{"a"}, Shared: []string{"b"}})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	_, err = g.Self().Call(ctx, "m", nil)
	assert.ErrorIs(t, err, context.Canceled)
	// A late reply is dropped, not delivered to the next caller.
	pub := b.Publisher(t)
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":1,"device":"A","value":1}`)
	_, err = g.Device("A").RequestAttributes(context.Background(), tb.AttributeKeys{Client: []string{"a"}})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

// TestAttributeRequestNeverCombined: a request for both scopes goes out as
// two one-scope requests, the only form a released server accepts
// (WIRE.md 10.5; the combined form of the docs closes the connection).
func TestAttributeRequestNeverCombined(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/gateway/attributes/#")
	pub := b.Publisher(t)
	g := dial(t, b)
	res := make(chan tb.AttributeValues, 1)
	go func() {
		r, err := g.Device("A").RequestAttributes(ctxT(t), tb.AttributeKeys{Client: []string{"k1"}, Shared: []string{"k3", "k4"}})
		assert.NoError(t, err)
		res <- r
	}()
	reqs := obs.Wait(t, "v1/gateway/attributes/request", 2, wait)
	sameJSON(t, `{"id":1,"device":"A","client":true,"key":"k1"}`, reqs[0].Payload)
	sameJSON(t, `{"id":2,"device":"A","client":false,"keys":["k3","k4"]}`, reqs[1].Payload)
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":1,"device":"A","value":1}`)
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":2,"device":"A","values":{"k3":"x","k4":true}}`)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{"k1": int64(1)}, Shared: tb.Values{"k3": "x", "k4": true}}, <-res)
}

func TestQoS0(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	g := dial(t, b, tb.WithQoS(0))
	require.NoError(t, g.Device("A").PublishTelemetry(ctxT(t), tb.Entry{Values: tb.Values{"a": 1}}))
	obs.Wait(t, "v1/gateway/telemetry", 1, wait)
	_, err := tb.Dial(ctxT(t), b.URL, tb.WithQoS(2))
	assert.ErrorIs(t, err, tb.ErrInvalidOption)
}

func TestOptionsRefused(t *testing.T) {
	ctx := ctxT(t)
	for _, opt := range []tb.Option{
		tb.WithAccessToken(""), tb.WithKeepAlive(0), tb.WithConnectTimeout(0), tb.WithRequestTimeout(-1),
		tb.WithMaxPayloadSize(1), tb.WithHandlerQueue(0, 1), tb.WithLogger(nil), tb.WithTLSConfig(nil),
		tb.WithRootCAs(nil), tb.WithCAFile("/nonexistent"), tb.WithPahoOptions(nil), tb.WithMaxReconnectDelay(0),
		tb.WithBasicCredentials("", "", "p"),
	} {
		_, err := tb.Dial(ctx, "tcp://127.0.0.1:1", opt)
		assert.ErrorIs(t, err, tb.ErrInvalidOption)
	}
	for _, u := range []string{"127.0.0.1:1883", "http://127.0.0.1:1", "::"} {
		_, err := tb.Dial(ctx, u)
		assert.ErrorIs(t, err, tb.ErrInvalidOption, u)
	}
}

func TestDialUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Nothing listens on port 1 of loopback.
	_, err := tb.Dial(ctx, "tcp://127.0.0.1:1", tb.WithConnectTimeout(time.Second))
	require.Error(t, err)
}

// TestCloseAndLeaks: calls after Close fail with ErrClosed, pending
// requests are released, and no goroutine is left behind.
func TestCloseAndLeaks(t *testing.T) {
	b := testbroker.Start(t)
	pub := b.Publisher(t)
	_ = pub
	opt := goleak.IgnoreCurrent()
	ctx := ctxT(t)
	g, err := tb.Dial(ctx, b.URL, tb.WithAccessToken("secret-token"))
	require.NoError(t, err)
	g.OnRPC(tb.RPCHandlerFunc(func(ctx context.Context, _ *tb.RPCRequest) (any, error) {
		<-ctx.Done() // handlers see Close through their context
		return nil, ctx.Err()
	}))
	pub.Publish(t, "v1/gateway/rpc", `{"device":"A","data":{"id":1,"method":"m"}}`)
	pending := make(chan error, 1)
	go func() {
		_, err := g.Device("A").RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"a"}})
		pending <- err
	}()
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, g.Close(ctx))
	assert.ErrorIs(t, <-pending, tb.ErrClosed)
	require.NoError(t, g.Close(ctx), "Close is idempotent")
	assert.ErrorIs(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"a": 1}}), tb.ErrClosed)
	_, err = g.Connect(ctx, "A")
	assert.ErrorIs(t, err, tb.ErrClosed)
	_, err = g.Self().Call(ctx, "m", nil)
	assert.ErrorIs(t, err, tb.ErrClosed)
	assert.False(t, g.Connected())
	goleak.VerifyNone(t, opt)
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

// TestPublishWhileDown: data published while the server is away waits in
// the queue; a call whose context ends says the data is still queued, and
// everything arrives once the server is back, devices announced first.
func TestPublishWhileDown(t *testing.T) {
	srv := tbtest.NewServer(t)
	down := make(chan struct{}, 4)
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(100*time.Millisecond), tb.WithConnectionListener(func(e tb.ConnectionEvent) {
		if e.State == tb.StateDown {
			down <- struct{}{}
		}
	}))
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "A", tb.WithDeviceProfile("P"))
	require.NoError(t, err)
	srv.Stop()
	select { // the gateway knows it is down: new data stays queued
	case <-down:
	case <-time.After(wait):
		t.Fatal("no Down event")
	}

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err = g.Device("A").PublishTelemetry(short, tb.Entry{TS: 1, Values: tb.Values{"n": 1}})
	assert.ErrorIs(t, err, tb.ErrEnqueued)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	done := make(chan error, 1)
	require.NoError(t, g.Device("A").PublishTelemetryAsync(ctx, []tb.Entry{{TS: 2, Values: tb.Values{"n": 2}}}, func(err error) { done <- err }))
	assert.Equal(t, 2, g.Stats().Queued)

	require.NoError(t, srv.Start())
	require.NoError(t, <-done)
	require.NoError(t, srv.WaitFor(ctx, func() bool { return len(srv.Series("A", "n")) == 2 }))
	assert.Equal(t, []tbtest.Point{{TS: 1, Value: int64(1)}, {TS: 2, Value: int64(2)}}, srv.Series("A", "n"))
	// The connect went out again before the data.
	lastConnect, data := -1, -1
	for i, m := range srv.Messages() {
		switch {
		case m.Topic == "v1/gateway/connect":
			lastConnect = i
		case m.Topic == "v1/gateway/telemetry" && data < 0:
			data = i
		}
	}
	assert.Less(t, lastConnect, data, "re-announce precedes queued data")
	assert.Greater(t, g.Stats().Announced, uint64(0))
}
