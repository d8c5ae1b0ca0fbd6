package tbgateway_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
	"github.com/thingsgate/tbgateway/tbtest"
)

// The outbound path: the queue while the server is away and its overflow
// policies, the callbacks of async calls, the maximum age of queued data,
// and the limits the sender keeps to: payload size (and splitting), rate
// limits and pacing.

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

// TestOverflowPolicies fills the queue while the server is away and checks
// each policy through the public API.
func TestOverflowPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy tb.OverflowPolicy
		check  func(t *testing.T, g *tb.Gateway, first <-chan error, err error)
	}{
		{tb.OverflowFailFast, func(t *testing.T, g *tb.Gateway, _ <-chan error, err error) {
			assert.ErrorIs(t, err, tb.ErrQueueFull)
			assert.Equal(t, uint64(1), g.Stats().Refused)
		}},
		{tb.OverflowDropOldest, func(t *testing.T, g *tb.Gateway, first <-chan error, err error) {
			require.NoError(t, err)
			select {
			case e := <-first:
				assert.ErrorIs(t, e, tb.ErrDropped)
			case <-time.After(wait):
				t.Fatal("the oldest record was not dropped")
			}
			assert.Equal(t, uint64(1), g.Stats().Dropped)
			assert.Zero(t, g.Stats().HandlerDropped, "an evicted record is not a dropped downlink")
		}},
		{tb.OverflowBlock, func(t *testing.T, g *tb.Gateway, _ <-chan error, err error) {
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		}},
	} {
		t.Run(fmt.Sprint(tc.policy), func(t *testing.T) {
			srv := tbtest.NewServer(t)
			g := dialTB(t, srv, tb.WithQueue(3, 1<<20, tc.policy))
			srv.Stop()
			require.Eventually(t, func() bool { return !g.Connected() }, wait, time.Millisecond)
			ctx := ctxT(t)
			first := make(chan error, 1)
			require.NoError(t, g.Device("A").PublishTelemetryAsync(ctx, []tb.Entry{{TS: 1, Values: tb.Values{"n": 1}}}, func(err error) { first <- err }))
			for i := 2; i <= 3; i++ {
				require.NoError(t, g.Device("A").PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i), Values: tb.Values{"n": i}}}, nil))
			}
			short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			err := g.Device("A").PublishTelemetryAsync(short, []tb.Entry{{TS: 4, Values: tb.Values{"n": 4}}}, nil)
			tc.check(t, g, first, err)
		})
	}
}

// TestSlowCallbackBounded: a callback that blocks slows its own lane and,
// through it, the publishers; no goroutine is spawned per outcome, and
// every outcome is delivered once the callback goes on.
func TestSlowCallbackBounded(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv, tb.WithQueue(1000, 1<<20, tb.OverflowBlock), tb.WithMaxInflight(2))
	release := make(chan struct{})
	var called atomic.Int64
	cb := func(err error) {
		<-release
		assert.NoError(t, err)
		called.Add(1)
	}
	base := runtime.NumGoroutine()
	dev := g.Device("slow")
	accepted := 0
	for i := range 20_000 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := dev.PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"n": i}}}, cb)
		cancel()
		if err != nil {
			require.True(t, errors.Is(err, context.DeadlineExceeded), "the publisher feels the slow callback: %v", err)
			break
		}
		if i == 0 {
			base = runtime.NumGoroutine() // the lane's worker is now stuck in the callback
		}
		accepted++
	}
	// At most the queue, the in-flight window and as many outcomes
	// pending as the queue holds.
	assert.Less(t, accepted, 8000, "publishers were held back")
	assert.Less(t, runtime.NumGoroutine(), base+20, "no goroutine per outcome")
	close(release)
	require.Eventually(t, func() bool { return called.Load() == int64(accepted) }, time.Minute, 5*time.Millisecond,
		"every outcome delivered")
}

// TestMaxAgeDropsStaleData: data that waited out an outage longer than
// WithMaxAge is dropped, its calls failed with ErrExpired and counted;
// data younger than that is sent.
func TestMaxAgeDropsStaleData(t *testing.T) {
	const maxAge = 500 * time.Millisecond
	srv := tbtest.NewServer(t)
	srv.Stop()
	ctx := ctxT(t)
	g := dialTB(t, srv, tb.WithOfflineStart(), tb.WithMaxAge(maxAge), tb.WithMaxReconnectDelay(100*time.Millisecond))

	var wg sync.WaitGroup
	var expired, sent atomic.Int32
	publish := func(dev string) {
		for i := range 50 {
			wg.Add(1)
			require.NoError(t, g.Device(dev).PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"n": i}}}, func(err error) {
				switch {
				case err == nil:
					sent.Add(1)
				case assert.ErrorIs(t, err, tb.ErrExpired):
					expired.Add(1)
				}
				wg.Done()
			}))
		}
	}
	publish("stale")
	// The passing of time is what this test is about: the stale data must
	// grow older than the maximum age while the server is down, and only
	// the clock makes it older. (A sleep kept on purpose.)
	time.Sleep(maxAge + 100*time.Millisecond)
	publish("fresh")
	require.NoError(t, srv.Start())
	wg.Wait()
	assert.EqualValues(t, 50, expired.Load())
	assert.EqualValues(t, 50, sent.Load())
	assert.Equal(t, 0, srv.TelemetryCount("stale"))
	assert.Equal(t, 50, srv.TelemetryCount("fresh"))
	assert.EqualValues(t, 50, g.Stats().Expired)
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

// TestOversizedBatchSplit: one call far larger than a message is split at
// entry boundaries; a single entry that cannot fit fails alone.
func TestOversizedBatchSplit(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithMaxPayloadSize(1024))
	g := dialTB(t, srv)
	ctx := ctxT(t)
	require.Eventually(t, func() bool { return g.Stats().LimitsApplied > 0 }, wait, 5*time.Millisecond)
	var es []tb.Entry
	for i := 0; i < 500; i++ {
		es = append(es, entry(i, 3))
	}
	require.NoError(t, g.PublishTelemetry(ctx, tb.Telemetry{"A": es, "B": es[:10]}))
	assert.Equal(t, 1500, srv.TelemetryCount("A"))
	assert.Equal(t, 30, srv.TelemetryCount("B"))
	big := tb.Entry{TS: 1, Values: tb.Values{"s": string(make([]byte, 2000))}}
	var pe *tb.PayloadTooLargeError
	require.ErrorAs(t, g.Device("C").PublishTelemetry(ctx, big), &pe)
	assert.Equal(t, 1024, pe.Limit)
	require.NoError(t, g.Device("C").PublishTelemetry(ctx, entry(1, 1)))
	assert.Empty(t, srv.Rejections())
}

// TestStreamUnderServerLimits streams telemetry into a server with a small
// maximum payload size and tight rate limits that it reports through
// getSessionLimits and enforces by closing the connection. The gateway
// learns them, splits and paces: it is never disconnected, no message is
// over the size limit, and every point arrives.
func TestStreamUnderServerLimits(t *testing.T) {
	const maxPayload = 2048
	srv := tbtest.NewServer(t, tbtest.WithMaxPayloadSize(maxPayload),
		tbtest.WithRateLimits(tbtest.RateLimits{Messages: "20:1"},
			tbtest.RateLimits{Messages: "40:1,300:10", TelemetryMessages: "40:1,300:10", TelemetryDataPoints: "2000:1,15000:10"}))
	g := dialTB(t, srv)
	ctx := ctxT(t)
	require.Eventually(t, func() bool { return g.Stats().LimitsApplied > 0 }, wait, 5*time.Millisecond)

	const devices, entries, keys = 10, 100, 5
	var wg, acks sync.WaitGroup
	errs := make(chan error, 2*devices*entries)
	for d := 0; d < devices; d++ {
		dev, err := g.Connect(ctx, fmt.Sprintf("dev-%d", d))
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half the data as one big call per device, which must be
			// split; the rest entry by entry, which is coalesced, in
			// Points, whose data points count the same.
			big := make([]tb.Entry, entries/2)
			for i := range big {
				big[i] = entry(i, keys)
			}
			errs <- dev.PublishTelemetry(ctx, big...)
			for i := entries / 2; i < entries; i++ {
				acks.Add(1)
				errs <- dev.PublishTelemetryAsync(ctx, []tb.Entry{pointEntry(i, keys)}, func(err error) { errs <- err; acks.Done() })
			}
		}()
	}
	wg.Wait()
	require.NoError(t, srv.WaitFor(ctx, func() bool {
		for d := 0; d < devices; d++ {
			if srv.TelemetryCount(fmt.Sprintf("dev-%d", d)) < entries*keys {
				return false
			}
		}
		return true
	}))
	acks.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Empty(t, srv.Rejections(), "the server had to refuse something")
	assert.Zero(t, g.Stats().Reconnects, "the server closed the connection")
	for _, m := range srv.Messages() {
		assert.LessOrEqual(t, 2+len(m.Topic)+2+len(m.Payload), maxPayload, "message over the limit on %s", m.Topic)
	}
	for d := 0; d < devices; d++ {
		series := srv.Series(fmt.Sprintf("dev-%d", d), "k0")
		require.Len(t, series, entries)
		for i, p := range series {
			assert.Equal(t, int64(1000+i), p.TS, "per-device order")
		}
	}
}

func entry(i, keys int) tb.Entry {
	v := make(tb.Values, keys)
	for k := 0; k < keys; k++ {
		if k%2 == 0 {
			v[fmt.Sprintf("k%d", k)] = i*keys + k
		} else {
			v[fmt.Sprintf("k%d", k)] = float64(i) + 0.5
		}
	}
	return tb.Entry{TS: int64(1000 + i), Values: v}
}

// pointEntry is entry with its values as Points.
func pointEntry(i, keys int) tb.Entry {
	ps := make([]tb.Point, keys)
	for k := range ps {
		if k%2 == 0 {
			ps[k] = tb.Int(fmt.Sprintf("k%d", k), i*keys+k)
		} else {
			ps[k] = tb.Float64(fmt.Sprintf("k%d", k), float64(i)+0.5)
		}
	}
	return tb.Entry{TS: int64(1000 + i), Points: ps}
}

// TestRateLimitsByOption paces by configured limits when the server's are
// not asked for (as with a server that does not answer getSessionLimits),
// and refuses an entry that no window could ever admit.
func TestRateLimitsByOption(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithRateLimits(tbtest.RateLimits{}, tbtest.RateLimits{TelemetryDataPoints: "50:1"}))
	g := dialTB(t, srv, tb.WithoutSessionLimits(), tb.WithRateLimits(tb.RateLimits{}, tb.RateLimits{TelemetryDataPoints: "50:1"}))
	ctx := ctxT(t)
	dev := g.Device("A")
	start := time.Now()
	for i := 0; i < 9; i++ { // 90 points: 45 at once, the rest paced at 45/s
		require.NoError(t, dev.PublishTelemetry(ctx, entry(i, 10)))
	}
	assert.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond, "paced")
	err := dev.PublishTelemetry(ctx, entry(99, 60))
	assert.ErrorIs(t, err, tb.ErrRateLimit)
	assert.ErrorIs(t, dev.PublishTelemetry(ctx, pointEntry(99, 60)), tb.ErrRateLimit)
	assert.Empty(t, srv.Rejections())
	assert.Equal(t, 90, srv.TelemetryCount("A"))
}

// TestPacedFromFirstByte: under tight limits, data published the moment
// Dial returns, for devices new on the connection, is paced by the limits
// the server reported (and the implicit connects are budgeted): the server
// never has to close the connection.
func TestPacedFromFirstByte(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithRateLimits(
		tbtest.RateLimits{Messages: "20:1"},
		tbtest.RateLimits{Messages: "30:1", TelemetryMessages: "20:1", TelemetryDataPoints: "100:1"}))
	g := dialTB(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for d := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := g.Device("paced-" + string(rune('a'+d)))
			for i := range 4 {
				assert.NoError(t, dev.PublishTelemetry(ctx, tb.Entry{TS: int64(i + 1), Values: tb.Values{"n": i}}))
			}
		}()
	}
	wg.Wait()
	assert.Empty(t, srv.Rejections(), "no breach")
	assert.Zero(t, g.Stats().Reconnects, "never disconnected")
	assert.Positive(t, g.Stats().LimitsApplied)
}
