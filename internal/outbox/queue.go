package outbox

import (
	"context"
	"errors"
	"sync"
)

// Policy decides what Put does when the queue is full.
type Policy uint8

const (
	// Block waits for room until the context ends.
	Block Policy = iota
	// FailFast refuses the new records at once.
	FailFast
	// DropOldest evicts the oldest queued records to make room, sparing
	// those the consumer holds from Peek.
	DropOldest
)

// Errors of Put.
var (
	ErrFull    = errors.New("outbox: queue full")
	ErrDropped = errors.New("outbox: dropped to make room for newer data")
	ErrClosed  = errors.New("outbox: closed")
	ErrTooBig  = errors.New("outbox: records larger than the whole queue")
)

// Queue is a FIFO of records bounded by count and bytes.
type Queue struct {
	mu sync.Mutex
	// ring holds the records from ring[head] on, n of them, wrapping
	// around its end: a stream passes through without the allocations
	// and copies of a slice appended at one end and cut at the other.
	ring     []*Record
	head, n  int
	wrapped  []*Record // Peek's copy of records that wrap around, or lent
	bytes    int
	maxMsgs  int
	maxBytes int
	policy   Policy
	closed   bool
	notify   chan struct{} // one-slot: wakes the consumer after a Put
	peeked   bool          // the consumer looked since the last wake
	space    chan struct{} // closed when room is made; nil when nobody waits
	dropped  uint64
	added    uint64 // records Put at the tail, counted under the lock Put holds anyway
	onDrop   func(r *Record)

	// Under DropOldest, the records of the consumer's last Peek are lent
	// to it: lentN of them, lentCost bytes, in one run from index lentAt
	// (front puts go before them, evictions around them).
	lentAt, lentN, lentCost int
}

// NewQueue returns a queue holding at most maxMsgs records and maxBytes
// bytes. onDrop, if set, is told of every record DropOldest evicts.
func NewQueue(maxMsgs, maxBytes int, policy Policy, onDrop func(*Record)) *Queue {
	return &Queue{maxMsgs: maxMsgs, maxBytes: maxBytes, policy: policy, notify: make(chan struct{}, 1), onDrop: onDrop}
}

// wakeConsumer tells the consumer there is something new.
func (q *Queue) wakeConsumer() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// wakeProducers releases callers blocked on a full queue.
func (q *Queue) wakeProducers() {
	if q.space != nil {
		close(q.space)
		q.space = nil
	}
}

func (q *Queue) lenLocked() int { return q.n }

func (q *Queue) fits(n, bytes int) bool {
	return q.n+n <= q.maxMsgs && q.bytes+bytes <= q.maxBytes
}

// slot returns the ring index of the i-th queued record.
func (q *Queue) slot(i int) int {
	if j := q.head + i; j < len(q.ring) {
		return j
	}
	return q.head + i - len(q.ring)
}

// ensure makes room in the ring for more records.
func (q *Queue) ensure(more int) {
	if q.n+more <= len(q.ring) {
		return
	}
	ring := make([]*Record, max(2*len(q.ring), q.n+more, 64))
	q.copyTo(ring)
	q.ring, q.head = ring, 0
}

// copyTo copies the queued records, in order, to dst.
func (q *Queue) copyTo(dst []*Record) {
	first := min(q.n, len(q.ring)-q.head)
	copy(dst, q.ring[q.head:q.head+first])
	copy(dst[first:], q.ring[:q.n-first])
}

// popHead removes the oldest record and returns it.
func (q *Queue) popHead() *Record {
	r := q.ring[q.head]
	q.dropHead()
	q.bytes -= r.Cost()
	return r
}

// dropHead frees the head slot; the caller accounts for the bytes.
func (q *Queue) dropHead() {
	q.ring[q.head] = nil
	if q.head++; q.head == len(q.ring) {
		q.head = 0
	}
	q.n--
}

// DropExpired removes the records at the head accepted before the given
// time (Record.At, unix nanoseconds) and calls fn with each. Records are
// in the order they were accepted, so the expired ones are at the head.
func (q *Queue) DropExpired(before int64, fn func(*Record)) int {
	q.mu.Lock()
	q.release()
	var gone []*Record
	for q.n > 0 {
		r := q.ring[q.head]
		if r.At == 0 || r.At >= before {
			break
		}
		gone = append(gone, q.popHead())
	}
	if len(gone) > 0 {
		q.wakeProducers()
	}
	q.mu.Unlock()
	for _, r := range gone {
		fn(r)
	}
	return len(gone)
}

// Put appends recs, all or none, applying the policy when full. front puts
// them at the head instead, whatever the bounds: records taken back from
// the connection, or loaded from disk, which were accepted before.
func (q *Queue) Put(ctx context.Context, recs []*Record, front bool) error {
	cost := 0
	for _, r := range recs {
		cost += r.Cost()
	}
	if !front && (len(recs) > q.maxMsgs || cost > q.maxBytes) {
		return ErrTooBig
	}
	q.mu.Lock()
	for !front && !q.closed && !q.fits(len(recs), cost) {
		switch q.policy {
		case FailFast:
			q.mu.Unlock()
			return ErrFull
		case DropOldest:
			// Evict only if that makes room: what the consumer holds is
			// being sent, not evicted, and otherwise frees room soon.
			if q.lentN+len(recs) <= q.maxMsgs && q.lentCost+cost <= q.maxBytes {
				for !q.fits(len(recs), cost) {
					r := q.evictOldest()
					q.dropped++
					if q.onDrop != nil {
						q.onDrop(r)
					}
				}
				continue
			}
		}
		if q.space == nil {
			q.space = make(chan struct{})
		}
		ch := q.space
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		q.mu.Lock()
	}
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	q.ensure(len(recs))
	if front {
		if q.head -= len(recs); q.head < 0 {
			q.head += len(q.ring)
		}
		q.lentAt += len(recs)
		for i, r := range recs {
			q.ring[q.slot(i)] = r
		}
	} else {
		for i, r := range recs {
			q.ring[q.slot(q.n+i)] = r
		}
		q.added += uint64(len(recs))
	}
	q.n += len(recs)
	q.bytes += cost
	// Only the first Put after the consumer looked needs to tell it: the
	// others would find the channel full anyway, after taking its lock.
	wake := q.peeked
	q.peeked = false
	q.mu.Unlock()
	if wake {
		q.wakeConsumer()
	}
	return nil
}

// Peek returns up to max records from the head without removing them, and
// a channel that receives when records are added (the queue has one
// consumer). The slice is valid until the next Peek or Take.
func (q *Queue) Peek(max int) ([]*Record, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.peeked = true
	q.release()
	n := min(q.n, max)
	if q.head+n <= len(q.ring) && q.policy != DropOldest {
		return q.ring[q.head : q.head+n : q.head+n], q.notify
	}
	// A copy where the records wrap around the ring's end, and always under
	// DropOldest: evictions move the records the consumer holds.
	if cap(q.wrapped) < n {
		q.wrapped = make([]*Record, 0, n)
	}
	q.wrapped = q.wrapped[:n]
	first := min(n, len(q.ring)-q.head)
	copy(q.wrapped, q.ring[q.head:q.head+first])
	copy(q.wrapped[first:], q.ring[:n-first])
	if q.policy == DropOldest {
		// The consumer may pack any of these: they are being sent, no
		// longer the oldest queued data.
		for _, r := range q.wrapped {
			q.lentCost += r.Cost()
		}
		q.lentAt, q.lentN = 0, n
	}
	return q.wrapped[:n:n], q.notify
}

// release ends the loan of the records of the last Peek.
func (q *Queue) release() {
	if len(q.wrapped) == 0 {
		return
	}
	q.lentAt, q.lentN, q.lentCost = 0, 0, 0
	clear(q.wrapped) // hold no records for the GC
	q.wrapped = q.wrapped[:0]
}

// evictOldest removes and returns the oldest record the consumer does not
// hold; there must be one.
func (q *Queue) evictOldest() *Record {
	if q.lentAt > 0 || q.lentN == 0 {
		if q.lentAt > 0 {
			q.lentAt--
		}
		return q.popHead()
	}
	// The run lent from the head moves up by one over the evicted record.
	k := q.lentN
	r := q.ring[q.slot(k)]
	for j := k; j > 0; j-- {
		q.ring[q.slot(j)] = q.ring[q.slot(j-1)]
	}
	q.dropHead()
	q.bytes -= r.Cost()
	return r
}

// Take removes taken, the first records of the consumer's last Peek, once
// it has them in a message, if they are still at the head. It reports
// false, removing nothing, when records were put in front since (taken
// back from the connection): they are older and go first, so the
// consumer must look again.
func (q *Queue) Take(taken []*Record) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(taken) == 0 || q.n < len(taken) || q.ring[q.head] != taken[0] {
		return false
	}
	for range taken {
		q.popHead()
	}
	q.release()
	if q.n == 0 && len(q.ring) > 1<<16 {
		q.ring, q.head = nil, 0 // a long outage is over: give its memory back
	}
	// Blocked producers are woken only once an eighth of the queue is free
	// again: waking all of them for every record taken makes a herd that
	// costs more than the sending. Under DropOldest, those that waited
	// for the consumer's records can evict others now.
	if q.space != nil && (q.policy == DropOldest || q.n <= q.maxMsgs-q.maxMsgs/8 && q.bytes <= q.maxBytes-q.maxBytes/8) {
		q.wakeProducers()
	}
	return true
}

// Len returns the queued records and bytes.
func (q *Queue) Len() (msgs, bytes int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lenLocked(), q.bytes
}

// Added returns how many records were Put at the tail.
func (q *Queue) Added() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.added
}

// Dropped returns how many records DropOldest evicted.
func (q *Queue) Dropped() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}

// Close refuses further records and returns those still queued.
func (q *Queue) Close() []*Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	rest := make([]*Record, q.n)
	q.copyTo(rest)
	q.ring, q.head, q.n, q.bytes = nil, 0, 0, 0
	q.wakeProducers()
	q.wakeConsumer()
	return rest
}
