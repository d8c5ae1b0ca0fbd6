package tbgateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

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
	_ = context.Background
}
