package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// base is the fake epoch; fake clocks start 1ns after it so that the batching
// jitter below also delays the very first burst.
var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeClock is a simulated clock whose sleeps return at once after moving
// time forward by the requested duration.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: base.Add(time.Nanosecond)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) sleep(ctx context.Context, d time.Duration, _ <-chan struct{}) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.advance(d)
	return nil
}

// fakeBucket returns a Bucket driven by clk.
func fakeBucket(l Limits, margin float64, clk *fakeClock) *Bucket {
	b := &Bucket{margin: margin, now: clk.now, sleep: clk.sleep}
	b.SetLimits(l)
	return b
}

func mustLimits(t testing.TB, messages, telemetryMessages, dataPoints string) Limits {
	t.Helper()
	l, err := ParseLimits(messages, telemetryMessages, dataPoints)
	require.NoError(t, err)
	return l
}

// admission is one message let through by a Bucket.
type admission struct {
	at   time.Time
	cost Cost
}

// replay calls Wait for each cost in turn, idling gap(i) before call i, and
// records when each was admitted.
func replay(t *testing.T, b *Bucket, clk *fakeClock, costs []Cost, gap func(i int) time.Duration) []admission {
	t.Helper()
	out := make([]admission, 0, len(costs))
	for i, c := range costs {
		if gap != nil {
			clk.advance(gap(i))
		}
		if err := b.Wait(context.Background(), c); err != nil {
			t.Fatalf("Wait #%d (%+v): %v", i, c, err)
		}
		out = append(out, admission{clk.now(), c})
	}
	return out
}

// serverWindow is an independent model of one server-side bucket4j window
// with greedy refill, in exact integer arithmetic: tokens are kept scaled by
// the period in nanoseconds.
type serverWindow struct {
	w      Window
	period int64 // ns
	scaled int64 // tokens * period
	last   time.Time
}

// server models the server's three limits of one bucket, all starting full
// at start.
type server struct {
	kinds [numKinds][]*serverWindow
}

func newServer(l Limits, start time.Time) *server {
	s := &server{}
	for k := range Kind(numKinds) {
		for _, w := range l.get(k).Windows() {
			p := int64(w.Seconds) * int64(time.Second)
			s.kinds[k] = append(s.kinds[k], &serverWindow{w: w, period: p, scaled: int64(w.Capacity) * p, last: start})
		}
	}
	return s
}

// consume takes c at time at (non-decreasing) and reports the first window
// that lacks tokens, which on the real server closes the connection.
func (s *server) consume(at time.Time, c Cost) error {
	n := c.amounts()
	for k, amt := range n {
		for _, sw := range s.kinds[k] {
			d := at.Sub(sw.last)
			if d < 0 {
				return fmt.Errorf("time went backwards")
			}
			el := min(int64(d), sw.period)
			full := int64(sw.w.Capacity) * sw.period
			sw.scaled = min(sw.scaled+el*int64(sw.w.Capacity), full)
			sw.last = at
			if need := int64(amt) * sw.period; amt > 0 && sw.scaled < need {
				return fmt.Errorf("%s window %s breached at %v: %.6f tokens for %d",
					Kind(k), sw.w, at.Sub(base), float64(sw.scaled)/float64(sw.period), amt)
			}
			sw.scaled -= int64(amt) * sw.period
		}
	}
	return nil
}

// checkServer replays the admissions, each arriving at arrive(at), against
// the server model and returns the first breach.
func checkServer(l Limits, start time.Time, adm []admission, arrive func(time.Time) time.Time) error {
	arr := slices.Clone(adm)
	if arrive != nil {
		for i := range arr {
			arr[i].at = arrive(arr[i].at)
		}
		slices.SortStableFunc(arr, func(a, b admission) int { return a.at.Compare(b.at) })
	}
	s := newServer(l, start)
	for i, a := range arr {
		if err := s.consume(a.at, a.cost); err != nil {
			return fmt.Errorf("arrival #%d: %w", i, err)
		}
	}
	return nil
}

// batching delays every admission to the next multiple of j after base: the
// worst bunching a network jitter below j can produce.
func batching(j time.Duration) func(time.Time) time.Time {
	return func(at time.Time) time.Time {
		d := at.Sub(base)
		return base.Add((d + j - 1) / j * j)
	}
}

// jitterTolerance is the documented bound: how far arrival may deviate from
// admission without a breach, over all windows of l.
func jitterTolerance(l Limits, margin float64) time.Duration {
	tol := time.Duration(math.MaxInt64)
	for k := range Kind(numKinds) {
		for _, w := range l.get(k).Windows() {
			burst := math.Floor(margin*float64(w.Capacity) + 1e-9)
			r := margin * float64(w.Capacity) / float64(w.Seconds)
			tol = min(tol, time.Duration((float64(w.Capacity)-burst)/r*float64(time.Second)))
		}
	}
	return tol
}

// utilization returns, per kind, the units admitted divided by the most the
// margin-scaled windows allow over the span of adm (0 for unlimited kinds).
func utilization(l Limits, margin float64, start time.Time, adm []admission) [numKinds]float64 {
	var used [numKinds]int
	for _, a := range adm {
		for k, amt := range a.cost.amounts() {
			used[k] += amt
		}
	}
	span := adm[len(adm)-1].at.Sub(start).Seconds()
	var u [numKinds]float64
	for k := range Kind(numKinds) {
		allowed := math.Inf(1)
		for _, w := range l.get(k).Windows() {
			burst := math.Floor(margin*float64(w.Capacity) + 1e-9)
			allowed = min(allowed, burst+margin*float64(w.Capacity)/float64(w.Seconds)*span)
		}
		if !math.IsInf(allowed, 1) {
			u[k] = float64(used[k]) / allowed
		}
	}
	return u
}

func repeat(c Cost, n int) []Cost {
	out := make([]Cost, n)
	for i := range out {
		out[i] = c
	}
	return out
}

func TestCheckerDetectsBreaches(t *testing.T) {
	l := mustLimits(t, "20:1", "", "")
	start := base.Add(time.Nanosecond)
	adm := make([]admission, 21)
	for i := range adm {
		adm[i] = admission{start, MessageCost(1)}
	}
	require.Error(t, checkServer(l, start, adm, nil), "21 at once must breach 20:1")
	require.NoError(t, checkServer(l, start, adm[:20], nil))
	adm[20].at = start.Add(50 * time.Millisecond)
	require.NoError(t, checkServer(l, start, adm, nil), "one token is back after 50ms")
}

func TestSingleWindowExactSchedule(t *testing.T) {
	l := mustLimits(t, "20:1", "", "")
	clk := newFakeClock()
	start := clk.now()
	b := fakeBucket(l, 0.9, clk)
	adm := replay(t, b, clk, repeat(MessageCost(1), 2000), nil)

	// 18 at once (burst after margin), then one every 1/18 s.
	for i, a := range adm {
		ideal := time.Duration(0)
		if i >= 18 {
			ideal = time.Duration(float64(i-17) / 18 * float64(time.Second))
		}
		if d := a.at.Sub(start) - ideal; d < -time.Microsecond || d > time.Microsecond {
			t.Fatalf("admission #%d at %v, want %v", i, a.at.Sub(start), ideal)
		}
	}
	require.NoError(t, checkServer(l, start, adm, nil))
	j := jitterTolerance(l, 0.9)
	assert.InDelta(t, 111*time.Millisecond, j, float64(time.Millisecond))
	require.NoError(t, checkServer(l, start, adm, batching(j*9/10)))
	u := utilization(l, 0.9, start, adm)
	assert.InDelta(t, 1, u[KindMessages], 0.01)
}

func TestMarginAbsorbsJitter(t *testing.T) {
	l := mustLimits(t, "20:1", "", "")
	jitter := batching(100 * time.Millisecond)
	for _, tc := range []struct {
		margin float64
		breach bool
	}{{1, true}, {0.9, false}} {
		clk := newFakeClock()
		start := clk.now()
		b := fakeBucket(l, tc.margin, clk)
		// Bursts after idle periods are where bunching hurts.
		adm := replay(t, b, clk, repeat(MessageCost(1), 500), func(i int) time.Duration {
			if i%50 == 0 {
				return 3 * time.Second
			}
			return 0
		})
		require.NoError(t, checkServer(l, start, adm, nil), "margin %v without jitter", tc.margin)
		err := checkServer(l, start, adm, jitter)
		if tc.breach {
			assert.Error(t, err, "margin %v with 100ms jitter should breach", tc.margin)
		} else {
			assert.NoError(t, err, "margin %v with 100ms jitter", tc.margin)
		}
	}
}

func TestMultipleWindows(t *testing.T) {
	l := mustLimits(t, "20:1,600:60", "", "")
	clk := newFakeClock()
	start := clk.now()
	b := fakeBucket(l, 0.9, clk)
	adm := replay(t, b, clk, repeat(MessageCost(1), 12000), nil)

	require.NoError(t, checkServer(l, start, adm, nil))
	require.NoError(t, checkServer(l, start, adm, batching(jitterTolerance(l, 0.9)*9/10)))

	// 18 immediately; 18/s while the 600:60 window drains; then 9/s.
	assert.Equal(t, start, adm[17].at)
	assert.Greater(t, adm[18].at, start)
	assert.InDelta(t, 1/18.0, adm[30].at.Sub(adm[29].at).Seconds(), 1e-6)
	steady := adm[2000:]
	rate := float64(len(steady)-1) / steady[len(steady)-1].at.Sub(steady[0].at).Seconds()
	assert.InEpsilon(t, 9.0, rate, 0.05, "long-run rate %v/s", rate)
	u := utilization(l, 0.9, start, adm)
	assert.InDelta(t, 1, u[KindMessages], 0.05)
}

// gatewayTraffic is a deterministic mix of telemetry with varying data
// points, plain messages and sub-device connects.
func gatewayTraffic(n int, seed uint64) []Cost {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]Cost, n)
	for i := range out {
		switch r := rng.IntN(100); {
		case r < 70:
			out[i] = TelemetryCost(1 + rng.IntN(40))
		case r < 95:
			out[i] = MessageCost(1)
		default:
			out[i] = MessageCost(3)
		}
	}
	return out
}

func TestMixedCosts(t *testing.T) {
	l := mustLimits(t, "20:1,600:60", "10:1,300:60", "100:1,2000:60")
	jitter := batching(jitterTolerance(l, 0.9) * 9 / 10)

	t.Run("saturated", func(t *testing.T) {
		clk := newFakeClock()
		start := clk.now()
		b := fakeBucket(l, 0.9, clk)
		adm := replay(t, b, clk, gatewayTraffic(8000, 1), nil)
		require.NoError(t, checkServer(l, start, adm, nil))
		require.NoError(t, checkServer(l, start, adm, jitter))
		u := utilization(l, 0.9, start, adm)
		for k, v := range u {
			assert.LessOrEqual(t, v, 1+1e-9, "%s", Kind(k))
		}
		// Data points are the bottleneck of this mix.
		assert.InDelta(t, 1, u[KindTelemetryDataPoints], 0.05, "utilization %v", u)
	})

	t.Run("bursty", func(t *testing.T) {
		clk := newFakeClock()
		start := clk.now()
		b := fakeBucket(l, 0.9, clk)
		rng := rand.New(rand.NewPCG(2, 2))
		adm := replay(t, b, clk, gatewayTraffic(8000, 3), func(int) time.Duration {
			if rng.IntN(40) == 0 {
				return time.Duration(rng.Int64N(int64(90 * time.Second)))
			}
			return time.Duration(rng.Int64N(int64(20 * time.Millisecond)))
		})
		require.NoError(t, checkServer(l, start, adm, nil))
		require.NoError(t, checkServer(l, start, adm, jitter))
	})
}

func TestCostExceedsBurst(t *testing.T) {
	l := mustLimits(t, "", "10:1", "100:1,50:60")
	clk := newFakeClock()
	b := fakeBucket(l, 0.9, clk)
	assert.Equal(t, 45, b.MaxDataPoints())
	assert.Equal(t, 9, b.MaxCost(KindTelemetryMessages))
	assert.Equal(t, 0, b.MaxCost(KindMessages))
	assert.Equal(t, 0, b.MaxCost(Kind(9)))

	t0 := clk.now()
	err := b.Wait(context.Background(), TelemetryCost(46))
	require.ErrorIs(t, err, ErrCostExceedsBurst)
	var be *BurstError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, BurstError{Kind: KindTelemetryDataPoints, Cost: 46, Burst: 45}, *be)
	assert.Contains(t, err.Error(), "telemetryDataPoints")
	assert.Equal(t, t0, clk.now(), "must fail without waiting")

	// Nothing was taken: the whole burst is still there.
	require.NoError(t, b.Wait(context.Background(), TelemetryCost(45)))
	assert.Equal(t, t0, clk.now())

	// A cost that fits is never rejected, however long it must wait, and
	// unlimited kinds accept anything.
	require.NoError(t, b.Wait(context.Background(), Cost{Messages: 1 << 30, TelemetryMessages: 1, DataPoints: 45}))
	assert.Greater(t, clk.now(), t0)
}

func TestUnlimited(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	huge := Cost{Messages: 1 << 40, TelemetryMessages: 1 << 40, DataPoints: 1 << 40}
	var nilBucket *Bucket
	var zero Bucket
	for name, b := range map[string]*Bucket{
		"nil":       nilBucket,
		"zero":      &zero,
		"unlimited": NewBucket(Limits{}, 0.9),
	} {
		assert.NoError(t, b.Wait(ctx, huge), name)
		assert.Equal(t, 0, b.MaxDataPoints(), name)
		assert.True(t, b.Limits().Unlimited(), name)
	}
	nilBucket.SetLimits(mustLimits(t, "1:1", "", "")) // no-op, no panic

	// The zero Bucket becomes usable through SetLimits.
	zero.SetLimits(mustLimits(t, "10:1", "", ""))
	assert.Equal(t, "10:1", zero.Limits().Messages.String())
	assert.Equal(t, 9, zero.MaxCost(KindMessages), "default margin")
}

func TestAbsurdlySlowLimitWaitsInsteadOfOverflowing(t *testing.T) {
	b := NewBucket(mustLimits(t, "1:9000000000", "", ""), 0.9)
	require.NoError(t, b.Wait(context.Background(), MessageCost(1)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, b.Wait(ctx, MessageCost(1)), context.DeadlineExceeded)
}

func TestNegativeAndZeroCosts(t *testing.T) {
	clk := newFakeClock()
	b := fakeBucket(mustLimits(t, "2:1", "2:1", "2:1"), 1, clk)
	for range 10 {
		require.NoError(t, b.Wait(context.Background(), Cost{Messages: -5, DataPoints: 0}))
	}
	assert.Equal(t, base.Add(time.Nanosecond), clk.now())
}

func TestMarginDefaults(t *testing.T) {
	l := mustLimits(t, "100:1", "", "")
	for _, m := range []float64{0, -1, 1.5, math.NaN()} {
		assert.Equal(t, 90, NewBucket(l, m).MaxCost(KindMessages), "margin %v", m)
	}
	assert.Equal(t, 100, NewBucket(l, 1).MaxCost(KindMessages))
	assert.Equal(t, 29, NewBucket(l, 0.29).MaxCost(KindMessages), "no float truncation below the exact product")
	assert.Equal(t, 1, NewBucket(mustLimits(t, "1:60", "", ""), 0.9).MaxCost(KindMessages), "burst is at least 1")
}

func TestKindsAreIndependent(t *testing.T) {
	clk := newFakeClock()
	b := fakeBucket(mustLimits(t, "5:1", "5:1", "50:1"), 1, clk)
	ctx := context.Background()
	for range 5 {
		require.NoError(t, b.Wait(ctx, MessageCost(1)))
	}
	t0 := clk.now()
	require.NoError(t, b.Wait(ctx, TelemetryCost(50)), "telemetry does not use the message limit")
	assert.Equal(t, t0, clk.now())
	require.NoError(t, b.Wait(ctx, TelemetryCost(1)))
	assert.Equal(t, 20*time.Millisecond, clk.now().Sub(t0), "50 data points were taken, one more needs 1/50 s")
	require.NoError(t, b.Wait(ctx, MessageCost(1)))
	assert.Equal(t, 200*time.Millisecond, clk.now().Sub(t0), "one message token needs 1/5 s")
}

func TestSetLimits(t *testing.T) {
	ctx := context.Background()
	l20 := mustLimits(t, "20:1", "", "")

	t.Run("unchanged keeps state", func(t *testing.T) {
		clk := newFakeClock()
		b := fakeBucket(l20, 0.9, clk)
		replay(t, b, clk, repeat(MessageCost(1), 18), nil)
		t0 := clk.now()
		b.SetLimits(mustLimits(t, " 20 : 1 ", "", ""))
		require.NoError(t, b.Wait(ctx, MessageCost(1)))
		assert.InDelta(t, 1/18.0, clk.now().Sub(t0).Seconds(), 1e-6)
	})

	t.Run("changed carries usage", func(t *testing.T) {
		clk := newFakeClock()
		b := fakeBucket(l20, 0.9, clk)
		replay(t, b, clk, repeat(MessageCost(1), 18), nil)
		t0 := clk.now()
		b.SetLimits(mustLimits(t, "40:1", "", ""))
		assert.Equal(t, 36, b.MaxCost(KindMessages))
		replay(t, b, clk, repeat(MessageCost(1), 18), nil)
		assert.Equal(t, t0, clk.now(), "36-18 tokens left")
		require.NoError(t, b.Wait(ctx, MessageCost(1)))
		assert.InDelta(t, 1/36.0, clk.now().Sub(t0).Seconds(), 1e-6)
	})

	t.Run("shrunk below usage starts empty", func(t *testing.T) {
		clk := newFakeClock()
		b := fakeBucket(l20, 0.9, clk)
		replay(t, b, clk, repeat(MessageCost(1), 18), nil)
		t0 := clk.now()
		b.SetLimits(mustLimits(t, "10:1", "", ""))
		require.NoError(t, b.Wait(ctx, MessageCost(1)))
		assert.InDelta(t, 1/9.0, clk.now().Sub(t0).Seconds(), 1e-6)
	})

	t.Run("from unlimited starts full", func(t *testing.T) {
		clk := newFakeClock()
		b := fakeBucket(Limits{}, 0.9, clk)
		replay(t, b, clk, repeat(MessageCost(1), 100), nil)
		b.SetLimits(l20)
		t0 := clk.now()
		replay(t, b, clk, repeat(MessageCost(1), 18), nil)
		assert.Equal(t, t0, clk.now())
	})

	t.Run("new limit rejects too large cost", func(t *testing.T) {
		clk := newFakeClock()
		b := fakeBucket(mustLimits(t, "", "", "100:1"), 0.9, clk)
		require.NoError(t, b.Wait(ctx, TelemetryCost(90)))
		b.SetLimits(mustLimits(t, "", "", "10:1"))
		assert.ErrorIs(t, b.Wait(ctx, TelemetryCost(90)), ErrCostExceedsBurst)
		b.SetLimits(Limits{})
		assert.NoError(t, b.Wait(ctx, TelemetryCost(90)))
	})
}

func TestSetLimitsWakesWaiter(t *testing.T) {
	b := NewBucket(mustLimits(t, "1:60", "", ""), 0.9)
	ctx := context.Background()
	require.NoError(t, b.Wait(ctx, MessageCost(1)))

	done := make(chan error, 1)
	go func() { done <- b.Wait(ctx, MessageCost(1)) }()
	time.Sleep(5 * time.Millisecond) // let it start sleeping (~67s)
	b.SetLimits(mustLimits(t, "1000:1", "", ""))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("waiter not woken by SetLimits")
	}
}

func TestContextCancellation(t *testing.T) {
	b := NewBucket(mustLimits(t, "1:60", "", ""), 0.9)
	require.NoError(t, b.Wait(context.Background(), MessageCost(1)))

	// The head waiter sleeps on the limit; a second one queues for its turn.
	headCtx, cancelHead := context.WithCancel(context.Background())
	head := make(chan error, 1)
	go func() { head <- b.Wait(headCtx, MessageCost(1)) }()
	time.Sleep(5 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err := b.Wait(ctx, MessageCost(1))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(t0), time.Second)

	cancelHead()
	select {
	case err := <-head:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(2 * time.Second):
		t.Fatal("head waiter ignored cancellation")
	}

	// Cancelled waiters took nothing: the one token used is all that is gone.
	w := b.st.Load().kinds[KindMessages].windows[0]
	assert.InDelta(t, 0, w.lim.TokensAt(time.Now()), 0.1)

	// Turns were released: an immediately admissible cost passes at once.
	b.SetLimits(mustLimits(t, "1000:1", "", ""))
	short, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	require.NoError(t, b.Wait(short, MessageCost(1)))
}

func TestConcurrentGenerous(t *testing.T) {
	// Period so long that refill during the test is below one unit.
	l := mustLimits(t, "100000:1000000", "100000:1000000", "1000000:1000000")
	b := NewBucket(l, 0.9)
	start := time.Now()
	const goroutines, each = 32, 300
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() { // concurrent readers and no-op reconfiguration
		for {
			select {
			case <-stop:
				return
			default:
				b.SetLimits(l)
				_ = b.MaxDataPoints()
				_ = b.Limits()
			}
		}
	}()
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				c := MessageCost(1)
				if (g+i)%2 == 0 {
					c = TelemetryCost(3)
				}
				assert.NoError(t, b.Wait(context.Background(), c))
			}
		}()
	}
	wg.Wait()
	close(stop)

	now := time.Now()
	st := b.st.Load()
	// Units taken = burst - tokens left - refill since start (at most 0.9
	// units per second of the test for every window here).
	refill := 0.9 * now.Sub(start).Seconds()
	used := func(k Kind) float64 {
		w := st.kinds[k].windows[0]
		return float64(w.burst) - w.lim.TokensAt(now)
	}
	total := goroutines * each
	assert.InDelta(t, total/2, used(KindMessages), refill+1e-6)
	assert.InDelta(t, total/2, used(KindTelemetryMessages), refill+1e-6)
	assert.InDelta(t, 3*total/2, used(KindTelemetryDataPoints), refill+1e-6)
}

func TestConcurrentPaced(t *testing.T) {
	// Burst 900, then 900/s: 1000 units need about 111ms.
	l := mustLimits(t, "1000:1", "", "")
	b := NewBucket(l, 0.9)
	const goroutines, each = 20, 50
	var mu sync.Mutex
	var adm []admission
	var wg sync.WaitGroup
	start := time.Now()
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if !assert.NoError(t, b.Wait(context.Background(), MessageCost(1))) {
					return
				}
				at := time.Now()
				mu.Lock()
				adm = append(adm, admission{at, MessageCost(1)})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	require.Len(t, adm, goroutines*each)
	assert.GreaterOrEqual(t, elapsed, 100*time.Millisecond)
	assert.Less(t, elapsed, 3*time.Second)
	slices.SortFunc(adm, func(a, b admission) int { return a.at.Compare(b.at) })
	// Timestamps taken after Wait returned lag admission a little; the
	// margin absorbs that as it absorbs network jitter.
	assert.NoError(t, checkServer(l, start, adm, nil))
}

func TestZeroAllocs(t *testing.T) {
	ctx := context.Background()
	unl := NewBucket(Limits{}, 0.9)
	far := NewBucket(mustLimits(t, "1000000000:1,1000000000:60", "1000000000:1", "1000000000:1"), 0.9)
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = unl.Wait(ctx, TelemetryCost(10)) }))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = far.Wait(ctx, MessageCost(1)) }))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = far.Wait(ctx, TelemetryCost(10)) }))
}

func TestBurstErrorIsTyped(t *testing.T) {
	var err error = &BurstError{Kind: KindMessages, Cost: 3, Burst: 2}
	assert.True(t, errors.Is(err, ErrCostExceedsBurst))
	assert.Equal(t, "ratelimit: cost of 3 messages exceeds the burst of 2", err.Error())
}

func BenchmarkWaitNil(b *testing.B) {
	var bk *Bucket
	ctx := context.Background()
	for b.Loop() {
		_ = bk.Wait(ctx, TelemetryCost(10))
	}
}

func BenchmarkWaitUnlimited(b *testing.B) {
	bk := NewBucket(Limits{}, 0.9)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = bk.Wait(ctx, TelemetryCost(10))
	}
}

func BenchmarkWaitLimited(b *testing.B) {
	far := mustLimits(b, "1000000000:1,1000000000:60", "1000000000:1", "1000000000:1,1000000000:60")
	ctx := context.Background()
	b.Run("message", func(b *testing.B) {
		bk := NewBucket(far, 0.9)
		b.ReportAllocs()
		for b.Loop() {
			_ = bk.Wait(ctx, MessageCost(1))
		}
	})
	b.Run("telemetry", func(b *testing.B) {
		bk := NewBucket(far, 0.9)
		b.ReportAllocs()
		for b.Loop() {
			_ = bk.Wait(ctx, TelemetryCost(10))
		}
	})
	b.Run("parallel", func(b *testing.B) {
		bk := NewBucket(far, 0.9)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_ = bk.Wait(ctx, MessageCost(1))
			}
		})
	})
}
