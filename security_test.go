package tbgateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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

// Security properties checked through the public API against the fake
// ThingsBoard: credentials never reach logs or error strings, TLS is
// verified by default with no fallback to plain text, and Close leaves no
// goroutine behind.

// secLog is a goroutine-safe sink for a slog handler.
type secLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *secLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *secLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// secDebugLogger logs everything, payloads included, as JSON into a new
// buffer.
func secDebugLogger() (*slog.Logger, *secLog) {
	sink := &secLog{}
	return slog.New(slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})), sink
}

func secContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// secErrorTexts returns every text an error can show: its message, its
// %+v form, and those of every error it wraps (a *ConnectError, for one,
// does not repeat the message of the error it wraps).
func secErrorTexts(err error) []string {
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
	logger, logs := secDebugLogger()
	ctx := secContext(t, 8*time.Second)
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
		for _, text := range secErrorTexts(err) {
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
	logger, logs := secDebugLogger()
	ctx := secContext(t, 5*time.Second)

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
	for _, text := range secErrorTexts(err) {
		assert.NotContains(t, text, token, "the access token from the broker URL appears in an error")
	}
}

// TestTLSVerifiedByDefaultNoPlaintextFallback: a server certificate that is
// not trusted fails the dial, and nothing falls back to plain MQTT.
func TestTLSVerifiedByDefaultNoPlaintextFallback(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithTLS())
	require.True(t, strings.HasPrefix(srv.URL(), "ssl://"), srv.URL())
	logger, logs := secDebugLogger()
	ctx := secContext(t, 8*time.Second)
	dial := func(url string, opts ...tb.Option) error {
		opts = append([]tb.Option{tb.WithAccessToken(tbtest.DefaultToken), tb.WithLogger(logger),
			tb.WithConnectTimeout(2 * time.Second)}, opts...)
		g, err := tb.Dial(ctx, url, opts...)
		if err == nil {
			_ = g.Close(ctx)
		}
		return err
	}
	isCertError := func(err error) bool {
		var cv *tls.CertificateVerificationError
		var ua x509.UnknownAuthorityError
		return errors.As(err, &cv) || errors.As(err, &ua)
	}

	err := dial(srv.URL())
	require.Error(t, err, "an untrusted server certificate must fail the dial")
	assert.True(t, isCertError(err), "want a certificate verification error, got %v", err)

	// A TLS configuration without trust anchors changes nothing: the
	// system roots do not know the server's CA either.
	err = dial(srv.URL(), tb.WithTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	require.Error(t, err)
	assert.True(t, isCertError(err), "want a certificate verification error, got %v", err)

	// Trusting another CA does not help.
	err = dial(srv.URL(), tb.WithRootCAs(x509.NewCertPool()))
	require.Error(t, err)
	assert.True(t, isCertError(err), "want a certificate verification error, got %v", err)

	// Other TLS schemes are verified the same way.
	addr := strings.TrimPrefix(srv.URL(), "ssl://")
	for _, scheme := range []string{"tls", "mqtts"} {
		err = dial(scheme + "://" + addr)
		require.Error(t, err, scheme)
		assert.True(t, isCertError(err), "%s: want a certificate verification error, got %v", scheme, err)
	}

	// Plain MQTT to the same host and port: the TLS listener does not
	// speak it, so the dial fails instead of sending credentials in clear.
	err = dial("tcp://" + addr)
	require.Error(t, err, "plain MQTT against a TLS listener must fail")

	assert.Empty(t, srv.Messages(), "the server received a publish without a verified TLS session")
	assert.Empty(t, srv.Rejections(), "a CONNECT reached the server without a verified TLS session")
	gw, ok := srv.Device(srv.GatewayName(tbtest.DefaultToken))
	require.True(t, ok)
	assert.False(t, gw.Connected)
	assert.NotContains(t, logs.String(), `"msg":"tbgateway: connected"`)

	// Control: trusting the server's CA works, so the failures above come
	// from verification and not from a broken server.
	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithLogger(logger),
		tb.WithRootCAs(srv.TLSConfig().RootCAs))
	require.NoError(t, err)
	require.NoError(t, g.Device("D").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	require.NoError(t, g.Close(ctx))
	assert.NotEmpty(t, srv.Messages())
}

// TestNoGoroutineLeakAfterClose exercises every kind of background work
// (handlers for RPC and attribute updates, requests, a dropped connection
// and the reconnect) and checks that Close ends all of it.
func TestNoGoroutineLeakAfterClose(t *testing.T) {
	srv := tbtest.NewServer(t)
	ignore := goleak.IgnoreCurrent()
	ctx := secContext(t, 8*time.Second)

	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken),
		tb.WithMaxReconnectDelay(100*time.Millisecond), tb.WithConnectTimeout(2*time.Second))
	require.NoError(t, err)
	a, err := g.Connect(ctx, "Leak A")
	require.NoError(t, err)
	b, err := g.Connect(ctx, "Leak B", tb.WithDeviceProfile("P"))
	require.NoError(t, err)

	a.OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) { return r.Params, nil }))
	g.OnRPC(tb.RPCHandlerFunc(func(ctx context.Context, _ *tb.RPCRequest) (any, error) {
		// Still running at Close: it must see its context end.
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

	// Leave work in flight: a handler that only ends with Close and an RPC
	// the server is still waiting for.
	rpcCtx, cancelRPC := context.WithCancel(ctx)
	slowDone := make(chan struct{})
	go func() {
		defer close(slowDone)
		_, _ = srv.RPC(rpcCtx, "Leak B", "slow", nil)
	}()
	require.Eventually(t, func() bool {
		for _, m := range srv.Sent() {
			if m.Topic == "v1/gateway/rpc" && bytes.Contains(m.Payload, []byte(`"slow"`)) {
				return true
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond)
	time.Sleep(20 * time.Millisecond) // let the handler start

	require.NoError(t, g.Close(ctx))
	cancelRPC()
	<-slowDone
	goleak.VerifyNone(t, ignore)
}
