package tbgateway_test

import (
	"context"
	"encoding/json"
	"fmt"
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

// Long fault runs: streams of a million points through server restarts,
// cut connections and broker restarts, checking that nothing is lost, that
// order and announcements hold, and that duplicates stay bounded.

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
			if err := dev.PublishTelemetryAsync(ctx, es, func(err error) { fail(err); wg.Done() }); err != nil {
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

// streamThroughFaults streams the plan and meanwhile calls fault up to n
// times, each once another eighth (or (n+1)th) of the points is acknowledged: the
// faults are spread over the stream whatever its speed. fault reports
// whether the fault took place (it is tried again if not). It returns once
// the stream is done, with the faults made and how many of them came while
// it was still running.
func (p streamPlan) streamThroughFaults(ctx context.Context, t *testing.T, g *tb.Gateway, n int, fault func(i int) bool) (faults, midStream int) {
	t.Helper()
	var streaming atomic.Bool
	streaming.Store(true)
	done := make(chan error, 1)
	go func() {
		err := p.stream(ctx, g)
		streaming.Store(false)
		done <- err
	}()
	total := uint64(p.devices * p.entries)
	for faults < n && streaming.Load() {
		// Stats has no change signal: poll the counter, and retry a
		// fault that could not take place yet, every millisecond.
		for want := total * uint64(faults+1) / uint64(max(8, n+1)); streaming.Load() && g.Stats().DataPoints < want; {
			time.Sleep(time.Millisecond)
		}
		if !fault(faults) {
			time.Sleep(time.Millisecond)
			continue
		}
		faults++
		if streaming.Load() {
			midStream++
		}
	}
	require.NoError(t, <-done)
	return faults, midStream
}

// seriesOf reads the plan's points of a device from a tbtest server, in
// the order they arrived.
func seriesOf(srv *tbtest.Server) func(dev string) []int64 {
	return func(dev string) []int64 {
		var out []int64
		for _, p := range srv.Series(dev, "n") {
			out = append(out, p.Value.(int64))
		}
		return out
	}
}

// verify checks that every point of every device arrived and, with
// checkOrder, that the last copies of a device's points arrived in order.
// It returns the number of duplicates and of early arrivals: runs of points
// whose first copy came before older points (a message that overtook the
// ones paho re-sent after a reconnect, and was then sent again after them;
// see README, "Order").
func (p streamPlan) verify(t *testing.T, checkOrder bool, series func(dev string) []int64) (dups, reorders int) {
	t.Helper()
	for d := 0; d < p.devices; d++ {
		got := series(p.name(d))
		seen := make([]bool, p.entries)
		high, prev := int64(-1), int64(-2)
		for _, v := range got {
			require.True(t, v >= 0 && v < int64(p.entries), "unexpected value %d", v)
			if seen[v] {
				dups++
				continue
			}
			if v < high {
				if checkOrder && v != prev+1 {
					reorders++ // the start of a run that arrived late
				}
			} else {
				high = v
			}
			seen[v], prev = true, v
		}
		for i, ok := range seen {
			require.True(t, ok, "device %s: point %d lost", p.name(d), i)
		}
		if checkOrder {
			// The last copy of every point arrives in order: what the
			// server ends up with is right even where a message overtook
			// the re-sent ones.
			last := make([]int, p.entries)
			for i, v := range got {
				last[v] = i
			}
			for v := 1; v < p.entries; v++ {
				require.Less(t, last[v-1], last[v], "device %s: the last copy of %d arrived after that of %d", p.name(d), v-1, v)
			}
		}
	}
	return dups, reorders
}

// dataBeforeConnect returns, per connection, the devices of plan whose
// data reached the server before their v1/gateway/connect on that
// connection, in the server's record of the wire order.
func dataBeforeConnect(t *testing.T, srv *tbtest.Server) (bad map[uint64][]string, conns int) {
	t.Helper()
	connected := map[uint64]map[string]bool{}
	bad = map[uint64][]string{}
	for _, m := range srv.Messages() {
		if m.Conn == 0 {
			continue
		}
		seen := connected[m.Conn]
		if seen == nil {
			seen = map[string]bool{}
			connected[m.Conn] = seen
		}
		switch m.Topic {
		case "v1/gateway/connect":
			var c struct{ Device string }
			require.NoError(t, json.Unmarshal(m.Payload, &c))
			seen[c.Device] = true
		case "v1/gateway/telemetry":
			var byDevice map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(m.Payload, &byDevice))
			for d := range byDevice {
				if !seen[d] {
					bad[m.Conn] = append(bad[m.Conn], d)
					seen[d] = true // count a device once per connection
				}
			}
		}
	}
	return bad, len(connected)
}

// TestFaultNoDataBeforeConnect streams through server restarts and
// dropped connections and checks, on every connection the server saw,
// that each device's connect went out before its data, and that nothing
// was lost. Each fault ends a connection of its own: it waits until the
// server has received something on a new connection since the last one
// (a restart while the gateway is still reconnecting would end none).
func TestFaultNoDataBeforeConnect(t *testing.T) {
	plan := streamPlan{devices: 40, entries: 10_000, batch: 50}
	srv := tbtest.NewServer(t)
	var lastConn atomic.Uint64 // the connection of the latest PUBLISH the server received
	srv.Control(tbtest.Match{}, func(p *tbtest.Packet) tbtest.Action {
		lastConn.Store(p.Conn)
		return tbtest.Pass() // and stays for the next packet
	})
	g := dialTB(t, srv, tb.WithMaxReconnectDelay(200*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for d := 0; d < plan.devices; d++ {
		_, err := g.Connect(ctx, plan.name(d), tb.WithDeviceProfile("ordered"))
		require.NoError(t, err)
	}
	var faulted uint64 // the connection the last fault ended
	faults, midStream := plan.streamThroughFaults(ctx, t, g, 10, func(i int) bool {
		conn := lastConn.Load()
		if conn == faulted {
			return false // nothing received on a new connection yet
		}
		if i%2 == 1 {
			if !srv.DropConnection(tbtest.DefaultToken) {
				return false
			}
		} else {
			require.NoError(t, srv.Restart())
		}
		faulted = conn
		return true
	})
	plan.verify(t, false, seriesOf(srv))
	bad, conns := dataBeforeConnect(t, srv)
	assert.Empty(t, bad, "data before its device's connect, by connection")
	assert.GreaterOrEqual(t, conns, 9, "connections seen by the server")
	assert.GreaterOrEqual(t, midStream, 8, "faults during the stream")
	for d := 0; d < plan.devices; d++ {
		dev, ok := srv.Device(plan.name(d))
		require.True(t, ok)
		assert.Equal(t, "ordered", dev.Profile, "never created implicitly with the default profile")
	}
	st := g.Stats()
	t.Logf("%d faults (%d mid-stream), %d connections, %d reconnects, %d re-sent, %d announced", faults, midStream, conns, st.Reconnects, st.Resent, st.Announced)
	assert.Empty(t, srv.Rejections())
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

	// Phase 1: faults while the data streams, spread over it by its
	// progress rather than by the clock.
	faults, midStream := plan.streamThroughFaults(ctx, t, g, 10, func(i int) bool {
		if i%3 == 2 {
			return srv.DropConnection(tbtest.DefaultToken) // false while still reconnecting from the last fault
		}
		require.NoError(t, srv.Restart())
		return true
	})

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

	dups, reorders := plan.verify(t, true, seriesOf(srv))
	st := g.Stats()
	t.Logf("tbtest: %d points sent, %d faults (%d mid-stream, %d reconnects), %d messages re-sent, %d duplicate points, %d late messages, 0 lost, %d RPCs answered",
		plan.devices*plan.entries, faults, midStream, st.Reconnects, st.Resent, dups, reorders, answered.Load())
	assert.LessOrEqual(t, reorders, faults*25, "at most one late message per fault (~20 device runs in a 64 KiB message)")
	assert.GreaterOrEqual(t, midStream, 5, "the faults must hit the stream")
	assert.GreaterOrEqual(t, st.Reconnects, uint64(5), "faults close together may share one reconnect")
	assert.Equal(t, int64(3*plan.devices), answered.Load())
	assert.LessOrEqual(t, dups, int(st.Resent)*maxPointsPerMessage, "duplicates come only from re-sent messages")
	assert.Empty(t, srv.Rejections())
}

// TestFaultBrokerRestarts is the same stream through a plain broker that is
// stopped and started again at least 5 times mid-stream: an embedded mochi
// broker, or in the Mosquitto pass of CI a real Mosquitto process (see
// testbroker.EnvMosquitto) that the test kills and starts. The broker's
// record of what it accepted must hold every point (in order per device,
// where the broker's acceptance order can be observed).
func TestFaultBrokerRestarts(t *testing.T) {
	plan := streamPlan{devices: 100, entries: 10_000, batch: 100}
	b := testbroker.StartRestartable(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := tb.Dial(ctx, b.URL, tb.WithAccessToken("fault"), tb.WithoutSessionLimits(), tb.WithMaxReconnectDelay(100*time.Millisecond))
	require.NoError(t, err)
	defer g.Close(context.Background())

	restarts, midStream := plan.streamThroughFaults(ctx, t, g, 8, func(int) bool {
		b.Stop()
		time.Sleep(30 * time.Millisecond) // the outage itself: the broker is away for a while (a sleep kept on purpose)
		require.NoError(t, b.Start())
		return true
	})
	b.WaitQuiet(300*time.Millisecond, time.Minute)
	t.Logf("stats after stream: %+v", g.Stats())

	series := map[string][]int64{}
	for i, p := range b.Messages() {
		_ = i
		m, err := jsonx.DecodeObject(p)
		require.NoError(t, err)
		for dev, v := range m {
			for _, e := range v.([]any) {
				n := e.(map[string]any)["values"].(map[string]any)["n"].(int64)
				series[dev] = append(series[dev], n)
			}
		}
	}
	// mochi records what it accepts, before the PUBACK, in order. Mosquitto
	// is observed through a subscriber whose queue the broker restores
	// from disk after each restart in an order of its own, so there only
	// completeness can be checked.
	dups, reorders := plan.verify(t, b.Kind == "mochi", func(dev string) []int64 { return series[dev] })
	st := g.Stats()
	t.Logf("%s: %d points sent, %d broker restarts (%d mid-stream, %d reconnects), %d messages re-sent, %d poisoned, %d duplicate points, %d late messages, 0 lost",
		b.Kind, plan.devices*plan.entries, restarts, midStream, st.Reconnects, st.Resent, st.Poisoned, dups, reorders)
	assert.LessOrEqual(t, reorders, restarts*25, "at most one late message per fault (~20 device runs in a 64 KiB message)")
	assert.GreaterOrEqual(t, midStream, 7, "the restarts must hit the stream")
	assert.LessOrEqual(t, dups, int(st.Resent)*maxPointsPerMessage, "duplicates come only from re-sent messages")
}

// TestFaultLingerStream is the fault stream in the other shape: one entry
// per call, coalesced with a linger, through server restarts and cut
// connections. Every point arrives, and the last copy of each in order.
// (Re-queueing between the sender's Peek and Remove, which a linger
// widens, is tested directly in outbox: faults rarely land in it.)
func TestFaultLingerStream(t *testing.T) {
	plan := streamPlan{devices: 50, entries: 2000, batch: 1}
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithCoalescing(5*time.Millisecond), tb.WithMaxReconnectDelay(50*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	faults, midStream := plan.streamThroughFaults(ctx, t, g, 6, func(i int) bool {
		if i%2 == 1 {
			return srv.DropConnection(tbtest.DefaultToken) // false while still reconnecting
		}
		require.NoError(t, srv.Restart())
		return true
	})
	total := plan.devices * plan.entries
	dups, reorders := plan.verify(t, true, seriesOf(srv))
	st := g.Stats()
	t.Logf("%d points in one-entry calls, linger 5ms: %d faults (%d mid-stream, %d reconnects), %d messages re-sent, %d duplicate points, %d late messages, 0 lost",
		total, faults, midStream, st.Reconnects, st.Resent, dups, reorders)
	assert.GreaterOrEqual(t, midStream, 4, "the faults must hit the stream")
	assert.LessOrEqual(t, dups, int(st.Resent)*maxPointsPerMessage, "duplicates come only from re-sent messages")
	assert.Empty(t, srv.Rejections())
}

// maxPointsPerMessage bounds the points of one 64 KiB message of the fault
// workload: its smallest entry, {"ts":1000000,"values":{"n":0}}, takes 31
// bytes and a comma. Duplicates can only come from re-sent messages, at
// most the in-flight window of them per fault.
const maxPointsPerMessage = 65536 / 32
