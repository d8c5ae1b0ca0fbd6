package tbgateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// Dial and Close: what they return, what they log, and that Close ends
// everything the gateway started.

func TestDialUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Nothing listens on port 1 of loopback.
	_, err := tb.Dial(ctx, "tcp://127.0.0.1:1", tb.WithConnectTimeout(time.Second))
	require.Error(t, err)
}

// errorTexts returns every text an error can show: its message, its %+v
// form, and those of every error it wraps (a *ConnectError, for one, does
// not repeat the message of the error it wraps).
func errorTexts(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		out = append(out, e.Error(), fmt.Sprintf("%+v", e))
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return out
}

// TestSecretsNeverInLogsOrErrors: credentials never reach the logs or an
// error's text, whatever way they were given and however the dial ends.
func TestSecretsNeverInLogsOrErrors(t *testing.T) {
	const (
		token      = "SECRET-TOKEN-123"
		wrongToken = "WRONG-SECRET-456"
		password   = "PASSWORD-789-QZX"
		urlSecret  = "URL-PASSWORD-314"
		device     = "Logged Sensor 7"
	)
	secrets := []string{token, wrongToken, password, urlSecret}
	srv := tbtest.NewServer(t, tbtest.WithGateway(token))
	logger, logs := debugLogger()
	ctx := ctxFor(t, 8*time.Second)
	var errs []error

	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(token), tb.WithLogger(logger),
		tb.WithMaxReconnectDelay(100*time.Millisecond), tb.WithConnectTimeout(2*time.Second))
	require.NoError(t, err)
	d, err := g.Connect(ctx, device)
	require.NoError(t, err)
	require.NoError(t, d.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"temperature": 21.5}}))

	// A refused access token.
	_, err = tb.Dial(ctx, srv.URL(), tb.WithAccessToken(wrongToken), tb.WithLogger(logger),
		tb.WithConnectTimeout(2*time.Second))
	require.Error(t, err)
	var ce *tb.ConnectError
	assert.ErrorAs(t, err, &ce, "a refused CONNECT is a *ConnectError")
	errs = append(errs, err)

	// Basic MQTT credentials with a password (the fake server refuses any
	// password, as ThingsBoard does for credentials it does not know).
	_, err = tb.Dial(ctx, srv.URL(), tb.WithBasicCredentials("basic-client", "basic-user", password),
		tb.WithLogger(logger), tb.WithConnectTimeout(2*time.Second))
	require.Error(t, err)
	errs = append(errs, err)

	// A password in the broker URL's user info (paho sends it).
	_, err = tb.Dial(ctx, "tcp://url-user:"+urlSecret+"@"+srv.Addr(), tb.WithAccessToken(wrongToken),
		tb.WithLogger(logger), tb.WithConnectTimeout(2*time.Second))
	require.Error(t, err)
	errs = append(errs, err)

	// The same URL towards a port nobody listens on: a network error,
	// which names the broker.
	_, err = tb.Dial(ctx, "tcp://url-user:"+urlSecret+"@127.0.0.1:1", tb.WithAccessToken(token),
		tb.WithLogger(logger), tb.WithConnectTimeout(time.Second))
	require.Error(t, err)
	errs = append(errs, err)

	// The server drops the connection; the gateway reconnects with its
	// token and announces the device again.
	require.True(t, srv.DropConnection(token))
	require.NoError(t, srv.WaitFor(ctx, func() bool {
		dv, ok := srv.Device(device)
		return ok && dv.Connected
	}), "device not re-announced after the drop")
	require.Eventually(t, func() bool { return g.Stats().Reconnects >= 1 }, 5*time.Second, 10*time.Millisecond)
	// paho reports the loss on a goroutine of its own, possibly after the
	// reconnect: wait for the log line.
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), `"level":"WARN"`) }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, d.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"temperature": 22.5}}))
	require.NoError(t, g.Close(ctx))
	errs = append(errs, d.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"temperature": 1}})) // ErrClosed

	// The credentials really were on the wire, so their absence below
	// means something.
	var users []string
	for _, m := range srv.Messages() {
		users = append(users, m.Username)
	}
	assert.Contains(t, users, token, "the server saw no publish authenticated with the token")
	var refused []string
	for _, r := range srv.Rejections() {
		refused = append(refused, r.Username)
	}
	assert.Contains(t, refused, wrongToken)
	assert.Contains(t, refused, "basic-user")
	assert.Contains(t, refused, "url-user")

	// The log has ordinary content, at debug level, and no credential.
	out := logs.String()
	require.NotEmpty(t, out)
	assert.Contains(t, out, device, "debug log should name the device")
	assert.Contains(t, out, `"level":"DEBUG"`)
	assert.Contains(t, out, `"level":"WARN"`, "the dropped connection should be logged")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		require.True(t, json.Valid([]byte(line)), "log line is not JSON: %s", line)
	}
	for _, s := range secrets {
		assert.NotContains(t, out, s, "a credential appears in the log")
	}
	for _, err := range errs {
		require.Error(t, err)
		for _, text := range errorTexts(err) {
			for _, s := range secrets {
				assert.NotContains(t, text, s, "a credential appears in an error")
			}
		}
	}
}

// TestSecretInBrokerURLNeverLogged: paho takes the user name and password
// from the broker URL's user info, so a token can be given as
// tcp://TOKEN@host. The token must not be logged with the broker address.
func TestSecretInBrokerURLNeverLogged(t *testing.T) {
	const token = "SECRET-URL-TOKEN-271"
	srv := tbtest.NewServer(t, tbtest.WithGateway(token))
	logger, logs := debugLogger()
	ctx := ctxFor(t, 5*time.Second)

	g, err := tb.Dial(ctx, "tcp://"+token+"@"+srv.Addr(), tb.WithLogger(logger), tb.WithConnectTimeout(2*time.Second))
	require.NoError(t, err, "the token in the URL authenticates")
	require.NoError(t, g.Device("D").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	require.NoError(t, g.Close(ctx))

	out := logs.String()
	require.Contains(t, out, srv.Addr(), "the broker address is logged")
	assert.NotContains(t, out, token, "the access token from the broker URL appears in the log")

	// A network error names the broker too.
	_, err = tb.Dial(ctx, "tcp://"+token+"@127.0.0.1:1", tb.WithLogger(logger), tb.WithConnectTimeout(time.Second))
	require.Error(t, err)
	require.Contains(t, err.Error(), "127.0.0.1:1", "the error names the broker")
	for _, text := range errorTexts(err) {
		assert.NotContains(t, text, token, "the access token from the broker URL appears in an error")
	}
}

// TestCloseAndLeaks exercises every kind of background work (handlers for
// RPC and attribute updates, requests, a dropped connection and the
// reconnect), leaves some of it running, and checks that Close ends all
// of it: handlers see Close through their context, pending requests are
// released with ErrClosed, every call after Close fails with ErrClosed,
// Close is idempotent, and no goroutine is left behind.
func TestCloseAndLeaks(t *testing.T) {
	srv := tbtest.NewServer(t)
	ignore := goleak.IgnoreCurrent()
	ctx := ctxFor(t, 8*time.Second)

	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken),
		tb.WithMaxReconnectDelay(100*time.Millisecond), tb.WithConnectTimeout(2*time.Second))
	require.NoError(t, err)
	a, err := g.Connect(ctx, "Leak A")
	require.NoError(t, err)
	b, err := g.Connect(ctx, "Leak B", tb.WithDeviceProfile("P"))
	require.NoError(t, err)

	a.OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) { return r.Params, nil }))
	started := make(chan struct{})
	var once sync.Once
	g.OnRPC(tb.RPCHandlerFunc(func(ctx context.Context, _ *tb.RPCRequest) (any, error) {
		// Still running at Close: it must see its context end.
		once.Do(func() { close(started) })
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	g.Self().OnRPC(tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) { return "pong", nil }))
	updates := make(chan tb.AttributeUpdate, 16)
	g.OnAttributeUpdate(tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { updates <- u }))
	b.OnAttributeUpdate(tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { updates <- u }))
	waitUpdate := func(device string) {
		t.Helper()
		select {
		case u := <-updates:
			require.Equal(t, device, u.Device)
		case <-ctx.Done():
			t.Fatalf("no attribute update for %s", device)
		}
	}

	round := func(n int) {
		t.Helper()
		reply, err := srv.RPC(ctx, "Leak A", "echo", map[string]any{"n": n})
		require.NoError(t, err)
		assert.JSONEq(t, fmt.Sprintf(`{"n":%d}`, n), string(reply))
		own, err := srv.GatewayRPC(ctx, tbtest.DefaultToken, "ping", nil)
		require.NoError(t, err)
		assert.JSONEq(t, `"pong"`, string(own))
		srv.SetSharedAttributes("Leak A", map[string]any{"k": n})
		waitUpdate("Leak A")
		srv.SetSharedAttributes("Leak B", map[string]any{"k": n})
		waitUpdate("Leak B")
		v, err := b.RequestAttributes(ctx, tb.AttributeKeys{Shared: []string{"k"}})
		require.NoError(t, err)
		assert.Equal(t, int64(n), v.Shared["k"])
		require.NoError(t, a.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"n": n}}))
	}
	round(1)

	require.True(t, srv.DropConnection(tbtest.DefaultToken))
	require.NoError(t, srv.WaitFor(ctx, func() bool {
		da, okA := srv.Device("Leak A")
		db, okB := srv.Device("Leak B")
		return okA && okB && da.Connected && db.Connected
	}), "devices not re-announced after the drop")
	round(2)

	// Leave work in flight: a handler that only ends with Close, an RPC
	// the server is still waiting for, and an attribute request the
	// server acknowledges but never answers.
	rpcCtx, cancelRPC := context.WithCancel(ctx)
	slowDone := make(chan struct{})
	go func() {
		defer close(slowDone)
		_, _ = srv.RPC(rpcCtx, "Leak B", "slow", nil)
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the handler never started")
	}
	asked := make(chan struct{})
	srv.Control(tbtest.Match{Topic: "v1/gateway/attributes/request", Device: "Leak A"}, func(*tbtest.Packet) tbtest.Action {
		close(asked)
		return tbtest.Reason(0) // acknowledged, never answered
	})
	pending := make(chan error, 1)
	go func() {
		_, err := a.RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"a"}})
		pending <- err
	}()
	select {
	case <-asked:
	case <-ctx.Done():
		t.Fatal("the attribute request never reached the server")
	}

	require.NoError(t, g.Close(ctx))
	assert.ErrorIs(t, <-pending, tb.ErrClosed)
	require.NoError(t, g.Close(ctx), "Close is idempotent")
	assert.ErrorIs(t, a.PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"a": 1}}), tb.ErrClosed)
	_, err = g.Connect(ctx, "Leak A")
	assert.ErrorIs(t, err, tb.ErrClosed)
	_, err = g.Self().Call(ctx, "m", nil)
	assert.ErrorIs(t, err, tb.ErrClosed)
	assert.False(t, g.Connected())
	cancelRPC()
	<-slowDone
	goleak.VerifyNone(t, ignore)
}

// TestCloseInEveryState: Close returns by its context's deadline whatever
// the gateway is doing, and leaves no goroutine behind.
func TestCloseInEveryState(t *testing.T) {
	cases := map[string]func(t *testing.T, srv *tbtest.Server) *tb.Gateway{
		"offline": func(t *testing.T, srv *tbtest.Server) *tb.Gateway {
			srv.Stop()
			g := dialOwned(t, srv, tb.WithOfflineStart())
			require.NoError(t, g.Device("d").PublishTelemetryAsync(ctxT(t), []tb.Entry{{Values: tb.Values{"a": 1}}}, nil))
			return g
		},
		"pacing": func(t *testing.T, srv *tbtest.Server) *tb.Gateway {
			g := dialOwned(t, srv, tb.WithRateLimits(tb.RateLimits{}, tb.RateLimits{Messages: "1:60"}), tb.WithoutSessionLimits())
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
			g := dialOwned(t, srv, opt, tb.WithRateLimits(tb.RateLimits{}, tb.RateLimits{Messages: "30:10"}), tb.WithoutSessionLimits())
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
			// A write paho started on a connection that was then cut can
			// hold its goroutine up to the write timeout (the connect
			// timeout, 10 s) after Close returned by its deadline: wait
			// that long for it, no longer.
			// (paho gives no signal for it: poll.)
			for end := time.Now().Add(15 * time.Second); goleak.Find(opt) != nil && time.Now().Before(end); {
				time.Sleep(100 * time.Millisecond)
			}
			goleak.VerifyNone(t, opt)
		})
	}
}
