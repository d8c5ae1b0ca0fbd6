package tbgateway_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// streamPlan is the fault tests' workload: devices × entries points, sent
// by one goroutine per device in calls of batch entries each.
type streamPlan struct {
	devices, entries, batch int
}

func (p streamPlan) name(d int) string { return fmt.Sprintf("fault-%03d", d) }

// stream publishes the plan asynchronously and returns once every call
// was acknowledged (or failed); it returns the first failure.
func (p streamPlan) stream(ctx context.Context, g *tb.Gateway) error {
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	fail := func(err error) {
		if err != nil {
			firstErr.CompareAndSwap(nil, &err)
		}
	}
	for d := 0; d < p.devices; d++ {
		dev := g.Device(p.name(d))
		for start := 0; start < p.entries; start += p.batch {
			es := make([]tb.Entry, 0, p.batch)
			for i := start; i < start+p.batch && i < p.entries; i++ {
				es = append(es, tb.Entry{TS: int64(1_000_000 + i), Values: tb.Values{"n": i}})
			}
			wg.Add(1)
			if err := dev.PublishTelemetryAsync(ctx, func(err error) { fail(err); wg.Done() }, es...); err != nil {
				wg.Done()
				return err
			}
		}
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return *e
	}
	return nil
}

// verify checks that every point of every device arrived, that each
// device's points arrived in order (a value below the highest seen so far
// must be a duplicate), and returns the number of duplicates.
func (p streamPlan) verify(t *testing.T, series func(dev string) []int64) (dups int) {
	t.Helper()
	for d := 0; d < p.devices; d++ {
		got := series(p.name(d))
		seen := make([]bool, p.entries)
		high := int64(-1)
		for _, v := range got {
			require.True(t, v >= 0 && v < int64(p.entries), "unexpected value %d", v)
			if seen[v] {
				dups++
				continue
			}
			require.Greater(t, v, high, "device %s: %d arrived after %d (out of order)", p.name(d), v, high)
			seen[v], high = true, v
		}
		for i, ok := range seen {
			require.True(t, ok, "device %s: point %d lost", p.name(d), i)
		}
	}
	return dups
}

// TestFaultServerRestarts streams 100 devices × 10,000 points while the
// server restarts and the connection is cut, at least 5 times in the
// middle of the stream. Every point arrives, per-device order holds,
// duplicates stay within what can be in flight at a cut, and after each of
// the last reconnects every device is announced again and answers an RPC.
func TestFaultServerRestarts(t *testing.T) {
	plan := streamPlan{devices: 100, entries: 10_000, batch: 100}
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var answered atomic.Int64
	for d := 0; d < plan.devices; d++ {
		dev, err := g.Connect(ctx, plan.name(d), tb.WithDeviceProfile("fault"))
		require.NoError(t, err)
		dev.OnRPC(tb.RPCHandlerFunc(func(context.Context, *tb.RPCRequest) (any, error) {
			answered.Add(1)
			return nil, nil
		}))
	}

	done := make(chan error, 1)
	var streaming atomic.Bool
	streaming.Store(true)
	go func() {
		err := plan.stream(ctx, g)
		streaming.Store(false)
		done <- err
	}()

	// Phase 1: faults while the data streams.
	faults, midStream := 0, 0
	for round := 0; round < 10 && streaming.Load(); round++ {
		time.Sleep(60 * time.Millisecond)
		if round%3 == 2 {
			if !srv.DropConnection(tbtest.DefaultToken) {
				continue // still reconnecting from the last fault
			}
		} else {
			require.NoError(t, srv.Restart())
		}
		faults++
		if streaming.Load() {
			midStream++
		}
	}
	require.NoError(t, <-done)

	// Phase 2: after each reconnect every device is announced again and
	// answers an RPC.
	allConnected := func() bool {
		for d := 0; d < plan.devices; d++ {
			if dev, ok := srv.Device(plan.name(d)); !ok || !dev.Connected {
				return false
			}
		}
		return true
	}
	for round := 0; round < 3; round++ {
		require.NoError(t, srv.WaitFor(ctx, allConnected), "devices not announced again after fault %d", faults)
		for d := 0; d < plan.devices; d++ {
			_, err := srv.RPC(ctx, plan.name(d), "ping", nil)
			require.NoError(t, err, "RPC to %s after fault %d", plan.name(d), faults)
		}
		if round < 2 {
			require.NoError(t, srv.Restart())
			faults++
		}
	}

	dups := plan.verify(t, func(dev string) []int64 {
		var out []int64
		for _, p := range srv.Series(dev, "n") {
			out = append(out, p.Value.(int64))
		}
		return out
	})
	st := g.Stats()
	t.Logf("tbtest: %d points sent, %d faults (%d mid-stream, %d reconnects), %d messages re-sent, %d duplicate points, 0 lost, %d RPCs answered",
		plan.devices*plan.entries, faults, midStream, st.Reconnects, st.Resent, dups, answered.Load())
	assert.GreaterOrEqual(t, midStream, 5, "the faults must hit the stream")
	assert.GreaterOrEqual(t, st.Reconnects, uint64(5), "faults close together may share one reconnect")
	assert.Equal(t, int64(3*plan.devices), answered.Load())
	// A duplicate is a message re-sent after a cut: at most the in-flight
	// window per fault, each message at most the points that fit in it.
	assert.LessOrEqual(t, uint64(dups), st.Resent*uint64(plan.batch)*uint64(plan.devices))
	assert.Empty(t, srv.Rejections())
}
