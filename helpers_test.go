package tbgateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/testbroker"
	"github.com/thingsgate/tbgateway/tbtest"
)

// The helpers shared by the external tests (package tbgateway_test). The
// package-internal tests have theirs in helpers_internal_test.go.

// wait bounds every wait of the tests.
const wait = 10 * time.Second

// ctxT returns a context that ends after wait, or with the test.
func ctxT(t *testing.T) context.Context { return ctxFor(t, wait) }

// ctxFor returns a context that ends after d, or with the test.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// open dials url and closes the gateway when the test ends, checking
// that Close succeeds.
func open(t *testing.T, url string, opts ...tb.Option) *tb.Gateway {
	t.Helper()
	g := openOwned(t, url, opts...)
	t.Cleanup(func() {
		// Not the test's context: it is already done when cleanups run.
		// Longer than wait: after faults, Close can wait that long for an
		// old connection's publish that paho holds for its write timeout
		// (WithConnectTimeout, 10 s).
		ctx, cancel := context.WithTimeout(context.Background(), 3*wait)
		defer cancel()
		assert.NoError(t, g.Close(ctx))
	})
	return g
}

// openOwned dials url; the test closes the gateway itself.
func openOwned(t *testing.T, url string, opts ...tb.Option) *tb.Gateway {
	t.Helper()
	g, err := tb.Dial(ctxT(t), url, opts...)
	require.NoError(t, err)
	return g
}

// dial connects a gateway to a plain broker (testbroker), which accepts
// any token and never answers getSessionLimits.
func dial(t *testing.T, b *testbroker.Broker, opts ...tb.Option) *tb.Gateway {
	t.Helper()
	return open(t, b.URL, append([]tb.Option{tb.WithAccessToken("test-token"), tb.WithoutSessionLimits()}, opts...)...)
}

// dialTB connects a gateway to the fake ThingsBoard with its default
// gateway token.
func dialTB(t *testing.T, srv *tbtest.Server, opts ...tb.Option) *tb.Gateway {
	t.Helper()
	return open(t, srv.URL(), append([]tb.Option{tb.WithAccessToken(tbtest.DefaultToken)}, opts...)...)
}

// dialOwned is dialTB for a test that closes the gateway itself (to
// check what Close does).
func dialOwned(t *testing.T, srv *tbtest.Server, opts ...tb.Option) *tb.Gateway {
	t.Helper()
	return openOwned(t, srv.URL(), append([]tb.Option{tb.WithAccessToken(tbtest.DefaultToken)}, opts...)...)
}

// sameJSON compares payloads as JSON trees that keep integers and floats
// apart.
func sameJSON(t *testing.T, want string, got []byte) {
	t.Helper()
	w, err := jsonx.Decode([]byte(want))
	require.NoError(t, err)
	g, err := jsonx.Decode(got)
	require.NoError(t, err, "payload %s", got)
	assert.Equal(t, w, g, "payload %s", got)
}

// rpcReply waits for the gateway's reply to RPC id of device on
// v1/gateway/rpc and returns its payload. It finds it by its shape (a
// top-level "id"): the observer may see a reply before the request it
// answers, as the broker delivers to each subscriber on its own.
func rpcReply(t *testing.T, obs *testbroker.Observer, device string, id int) []byte {
	t.Helper()
	msgs := obs.WaitUntil(t, wait, func(m testbroker.Message) bool {
		if m.Topic != "v1/gateway/rpc" {
			return false
		}
		o, err := jsonx.DecodeObject(m.Payload)
		return err == nil && o["device"] == device && o["id"] == int64(id)
	})
	return msgs[len(msgs)-1].Payload
}

var markers atomic.Int64

// marker is the barrier for "nothing else was sent": it publishes a
// telemetry marker through g and waits until obs has it. The broker
// delivers one client's messages in order, so whatever g published before
// the marker has arrived by then. It returns what obs received up to the
// marker, the marker included.
func marker(t *testing.T, g *tb.Gateway, obs *testbroker.Observer) []testbroker.Message {
	t.Helper()
	name := fmt.Sprintf("marker-%d", markers.Add(1))
	require.NoError(t, g.Device(name).PublishTelemetry(ctxT(t), tb.Entry{Values: tb.Values{"marker": true}}))
	return obs.WaitUntil(t, wait, func(m testbroker.Message) bool {
		return m.Topic == "v1/gateway/telemetry" && bytes.Contains(m.Payload, []byte(`"`+name+`"`))
	})
}

// vec is one of the spec's test vectors (testdata/vectors).
type vec struct {
	Name, Topic, Payload string
}

func vectors(t *testing.T, file string) map[string]vec {
	t.Helper()
	raw, err := os.ReadFile("testdata/vectors/" + file)
	require.NoError(t, err)
	var list []vec
	require.NoError(t, json.Unmarshal(raw, &list))
	m := map[string]vec{}
	for _, v := range list {
		m[v.Name] = v
	}
	return m
}

// upEvents returns an option that records the gateway's connection events
// and a channel that receives the time of each Up.
func upEvents() (tb.Option, <-chan time.Time) {
	ups := make(chan time.Time, 1024)
	return tb.WithConnectionListener(func(e tb.ConnectionEvent) {
		if e.State == tb.StateUp {
			ups <- time.Now()
		}
	}), ups
}

// logBuffer is a goroutine-safe sink for a slog handler.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// debugLogger logs everything, payloads included, as JSON into a new
// buffer.
func debugLogger() (*slog.Logger, *logBuffer) {
	sink := &logBuffer{}
	return slog.New(slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})), sink
}

// logSignal returns an option that logs into a handler watching for a
// message, and a channel that is closed, with the record's "err"
// attribute stored in *err, the first time msg is logged: a log line as
// an event to wait for.
func logSignal(msg string) (opt tb.Option, seen <-chan struct{}, err *error) {
	h := &signalHandler{msg: msg, seen: make(chan struct{}), err: new(error)}
	return tb.WithLogger(slog.New(h)), h.seen, h.err
}

type signalHandler struct {
	msg  string
	once sync.Once
	seen chan struct{}
	err  *error
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *signalHandler) WithGroup(string) slog.Handler            { return h }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.msg {
		return nil
	}
	h.once.Do(func() {
		r.Attrs(func(a slog.Attr) bool {
			if e, ok := a.Value.Any().(error); ok && a.Key == "err" {
				*h.err = e
			}
			return true
		})
		close(h.seen)
	})
	return nil
}
