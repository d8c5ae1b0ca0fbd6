// Package ratelimit paces uplinks so that a ThingsBoard connection never
// breaches the transport rate limits reported by getSessionLimits: the server
// closes the connection on a breach, so the client has to wait instead.
//
// The server keeps one bucket4j bucket per limit and entity; each
// "capacity:seconds" window of a limit is a token bucket that starts full,
// holds at most capacity tokens and refills greedily at capacity/seconds
// tokens per second, and a message passes only if every window has enough
// tokens. A Bucket mirrors that model, scaled by a safety margin m: each
// window becomes a bucket of floor(m*capacity) tokens refilling at
// m*capacity/seconds. The reduced burst lets messages reach the server up to
// (capacity-floor(m*capacity))/(m*capacity/seconds) later or earlier than
// admitted without a breach (network jitter, clock differences: about 11% of
// the period for m=0.9 and capacities that are multiples of 10, nothing for a
// capacity of 1), and the reduced rate keeps the server's buckets gaining on
// ours.
//
// Admission is exact rather than reserved ahead: a message is admitted only
// at an instant when every affected window holds its whole cost, and the cost
// is then taken from all of them together, the way the server consumes it.
// (Reserving on each window and then waiting for the latest reservation is
// not safe: a window whose reservation came due early is charged before the
// message is really sent, so refill it had at capacity is counted twice.)
// Waiters are served first come, first served per kind, so a large telemetry
// message is not starved by a stream of small ones.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMargin is the safety margin NewBucket uses when given an invalid one.
const DefaultMargin = 0.9

// ErrCostExceedsBurst is matched (errors.Is) by a BurstError: the cost can
// never be admitted under the current limits, so the message must be split.
var ErrCostExceedsBurst = errors.New("ratelimit: cost exceeds burst")

// BurstError reports a cost that is larger than the burst of one of its
// limits (after the safety margin) and can therefore never pass.
type BurstError struct {
	Kind  Kind // the limit that is too small
	Cost  int  // units requested of that limit
	Burst int  // most units one message may take (MaxCost)
}

// Error describes the offending limit.
func (e *BurstError) Error() string {
	return fmt.Sprintf("ratelimit: cost of %d %s exceeds the burst of %d", e.Cost, e.Kind, e.Burst)
}

// Unwrap makes errors.Is(err, ErrCostExceedsBurst) hold.
func (e *BurstError) Unwrap() error { return ErrCostExceedsBurst }

// Cost is what one message takes from each limit of a bucket.
type Cost struct {
	Messages          int // units of Limits.Messages
	TelemetryMessages int // units of Limits.TelemetryMessages
	DataPoints        int // units of Limits.TelemetryDataPoints
}

// MessageCost is the cost of n plain messages; use n > 1 to account for
// server-side work a message triggers, e.g. 3 for v1/gateway/connect of a new
// device (device creation, session open, the connect itself).
func MessageCost(n int) Cost { return Cost{Messages: n} }

// TelemetryCost is the cost of one telemetry or attribute post carrying the
// given number of data points (key-value pairs over all its entries).
func TelemetryCost(points int) Cost { return Cost{TelemetryMessages: 1, DataPoints: points} }

// amounts returns the cost per kind, negative amounts counted as zero.
func (c Cost) amounts() [numKinds]int {
	return [numKinds]int{max(c.Messages, 0), max(c.TelemetryMessages, 0), max(c.DataPoints, 0)}
}

// Bucket paces messages against the three limits of one server bucket. A nil
// or zero Bucket is unlimited. All methods are safe for concurrent use.
type Bucket struct {
	margin float64
	now    func() time.Time
	sleep  func(ctx context.Context, d time.Duration, wake <-chan struct{}) error

	// turns serialises waiters per kind (first come, first served); a
	// waiter takes the turns of the kinds it needs in kind order.
	turns [numKinds]chan struct{}

	// st is replaced as a whole by SetLimits; it is published after the
	// fields above are set, so a limited state implies an initialised Bucket.
	st atomic.Pointer[state]

	mu   sync.Mutex    // serialises check-and-take against SetLimits
	wake chan struct{} // closed by SetLimits to re-evaluate sleeping waiters; guarded by mu
}

// state is one immutable configuration with its live token buckets.
type state struct {
	limits    Limits
	kinds     [numKinds]kindState
	unlimited bool
}

// kindState holds the windows of one limit.
type kindState struct {
	windows []window
	burst   int // smallest burst of the windows; 0 when unlimited
}

// window is a margin-scaled token bucket for one "cap:sec" term.
type window struct {
	lim   *rate.Limiter
	rate  float64 // tokens per second, cached to avoid the limiter's lock
	burst int
}

// NewBucket returns a Bucket enforcing l with the given safety margin, the
// fraction of each window's capacity and rate it may use; a margin outside
// (0, 1] means DefaultMargin. All windows start full, like the server's.
func NewBucket(l Limits, margin float64) *Bucket {
	b := &Bucket{margin: margin}
	b.SetLimits(l)
	return b
}

// init sets up the Bucket on first configuration; b.mu must be held.
func (b *Bucket) init() {
	if b.wake != nil {
		return
	}
	if !(b.margin > 0 && b.margin <= 1) {
		b.margin = DefaultMargin
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.sleep == nil {
		b.sleep = sleep
	}
	for k := range b.turns {
		b.turns[k] = make(chan struct{}, 1)
	}
	b.wake = make(chan struct{})
}

// SetLimits replaces the limits, e.g. with a new getSessionLimits answer
// after a reconnect. A limit that did not change keeps its token state, as
// the server's bucket does across reconnects; a changed limit starts with as
// many tokens used as the most used window of the old one (capped at the new
// burst), because the server's fresh bucket may already have been drawn on
// since the change. Waiters re-evaluate at once. SetLimits on nil is a no-op.
func (b *Bucket) SetLimits(l Limits) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	now := b.now()
	old := b.st.Load()
	st := &state{limits: l, unlimited: l.Unlimited()}
	for k := range Kind(numKinds) {
		nl := l.get(k)
		if old != nil && old.limits.get(k).equal(nl) {
			st.kinds[k] = old.kinds[k]
			continue
		}
		var used float64
		if old != nil {
			for _, w := range old.kinds[k].windows {
				used = max(used, float64(w.burst)-w.lim.TokensAt(now))
			}
		}
		st.kinds[k] = newKindState(nl, b.margin, now, used)
	}
	b.st.Store(st)
	close(b.wake)
	b.wake = make(chan struct{})
}

// newKindState builds margin-scaled windows for l with used tokens already
// taken from each.
func newKindState(l Limit, margin float64, now time.Time, used float64) kindState {
	var ks kindState
	for _, w := range l.windows {
		burst := max(int(math.Floor(margin*float64(w.Capacity)+1e-9)), 1)
		r := margin * float64(w.Capacity) / float64(w.Seconds)
		lim := rate.NewLimiter(rate.Limit(r), burst)
		if u := min(int(math.Ceil(used)), burst); u > 0 {
			lim.AllowN(now, u)
		}
		ks.windows = append(ks.windows, window{lim: lim, rate: r, burst: burst})
		if ks.burst == 0 || burst < ks.burst {
			ks.burst = burst
		}
	}
	return ks
}

// Limits returns the limits currently enforced.
func (b *Bucket) Limits() Limits {
	if b == nil {
		return Limits{}
	}
	if st := b.st.Load(); st != nil {
		return st.limits
	}
	return Limits{}
}

// MaxCost returns the most units of kind k one message may take, i.e. the
// smallest burst of that limit's windows after the margin, or 0 if the limit
// is unlimited. A larger cost fails with ErrCostExceedsBurst.
func (b *Bucket) MaxCost(k Kind) int {
	if b == nil || k < 0 || k >= numKinds {
		return 0
	}
	if st := b.st.Load(); st != nil {
		return st.kinds[k].burst
	}
	return 0
}

// MaxDataPoints is MaxCost(KindTelemetryDataPoints): the largest number of
// data points one message may carry (0 = unlimited), so that batches can be
// split before they become unsendable.
func (b *Bucket) MaxDataPoints() int { return b.MaxCost(KindTelemetryDataPoints) }

// check returns a BurstError if some part of n can never be admitted.
func (st *state) check(n *[numKinds]int) error {
	for k, amt := range n {
		if burst := st.kinds[k].burst; burst > 0 && amt > burst {
			return &BurstError{Kind: Kind(k), Cost: amt, Burst: burst}
		}
	}
	return nil
}

// Wait blocks until the whole cost c can be taken from every window of every
// limit it touches, takes it, and returns nil; the caller should send the
// message right away. It returns a *BurstError (ErrCostExceedsBurst) at once
// if c can never pass, and ctx.Err() if ctx ends first, in which case
// nothing is taken. An immediately admissible cost is admitted even if ctx
// is already done.
func (b *Bucket) Wait(ctx context.Context, c Cost) error {
	if b == nil {
		return nil
	}
	st := b.st.Load()
	if st == nil || st.unlimited {
		return nil
	}
	n := c.amounts()
	if err := st.check(&n); err != nil {
		return err
	}
	var held [numKinds]bool
	limited := false
	for k, amt := range n {
		if amt == 0 || st.kinds[k].burst == 0 {
			continue
		}
		select {
		case b.turns[k] <- struct{}{}:
		default:
			select {
			case b.turns[k] <- struct{}{}:
			case <-ctx.Done():
				b.release(&held)
				return ctx.Err()
			}
		}
		held[k] = true
		limited = true
	}
	if !limited {
		return nil
	}
	err := b.admit(ctx, &n)
	b.release(&held)
	return err
}

// release gives back the turns a waiter holds.
func (b *Bucket) release(held *[numKinds]bool) {
	for k, h := range held {
		if h {
			<-b.turns[k]
		}
	}
}

// admit waits until every window holds its share of n and takes it.
func (b *Bucket) admit(ctx context.Context, n *[numKinds]int) error {
	for {
		b.mu.Lock()
		st := b.st.Load()
		if err := st.check(n); err != nil {
			b.mu.Unlock()
			return err
		}
		now := b.now()
		var wait time.Duration
		for k, amt := range n {
			if amt == 0 {
				continue
			}
			for _, w := range st.kinds[k].windows {
				// Same arithmetic as rate.Limiter, so AllowN below
				// agrees with the decision taken here.
				if missing := float64(amt) - w.lim.TokensAt(now); missing > 0 {
					d := time.Duration(math.MaxInt64) // absurdly slow limit: "forever"
					if f := missing / w.rate * float64(time.Second); f < math.MaxInt64 {
						d = time.Duration(f)
					}
					wait = max(wait, d)
				}
			}
		}
		if wait <= 0 {
			for k, amt := range n {
				if amt == 0 {
					continue
				}
				for _, w := range st.kinds[k].windows {
					w.lim.AllowN(now, amt)
				}
			}
			b.mu.Unlock()
			return nil
		}
		wake := b.wake
		b.mu.Unlock()
		if err := b.sleep(ctx, wait, wake); err != nil {
			return err
		}
	}
}

// sleep waits for d, an early wake-up, or the end of ctx.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Charge takes c at once, without waiting, even into debt: for what the
// server counts whether or not the client asked (a session opened or
// closed), so that the messages after it wait for the tokens it used.
func (b *Bucket) Charge(c Cost) {
	if b == nil {
		return
	}
	st := b.st.Load()
	if st == nil || st.unlimited {
		return
	}
	n := c.amounts()
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	for k, amt := range n {
		if amt == 0 {
			continue
		}
		for _, w := range st.kinds[k].windows {
			w.lim.ReserveN(now, min(amt, w.burst))
		}
	}
}

// Limited reports whether any limit is in force.
func (b *Bucket) Limited() bool {
	if b == nil {
		return false
	}
	st := b.st.Load()
	return st != nil && !st.unlimited
}
