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
	// DropOldest evicts the oldest queued records to make room.
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
	mu       sync.Mutex
	items    []*Record
	head     int
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

func (q *Queue) lenLocked() int { return len(q.items) - q.head }

func (q *Queue) fits(n, bytes int) bool {
	return q.lenLocked()+n <= q.maxMsgs && q.bytes+bytes <= q.maxBytes
}

// Put appends recs, all or none, applying the policy when full. front puts
// them at the head instead (records re-queued or loaded from disk).
func (q *Queue) Put(ctx context.Context, recs []*Record, front bool) error {
	cost := 0
	for _, r := range recs {
		cost += r.Cost()
	}
	if len(recs) > q.maxMsgs || cost > q.maxBytes {
		return ErrTooBig
	}
	q.mu.Lock()
	for !front && !q.closed && !q.fits(len(recs), cost) {
		switch q.policy {
		case FailFast:
			q.mu.Unlock()
			return ErrFull
		case DropOldest:
			for !q.fits(len(recs), cost) && q.lenLocked() > 0 {
				r := q.items[q.head]
				q.items[q.head] = nil
				q.head++
				q.bytes -= r.Cost()
				q.dropped++
				if q.onDrop != nil {
					q.onDrop(r)
				}
			}
			continue
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
	if front {
		rest := q.items[q.head:]
		items := make([]*Record, 0, len(recs)+len(rest))
		items = append(append(items, recs...), rest...)
		q.items, q.head = items, 0
	} else {
		q.items = append(q.items, recs...)
		q.added += uint64(len(recs))
	}
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
// consumer).
func (q *Queue) Peek(max int) ([]*Record, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.peeked = true
	n := min(q.lenLocked(), max)
	return q.items[q.head : q.head+n : q.head+n], q.notify
}

// Remove drops the first n records (taken by the sender).
func (q *Queue) Remove(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := 0; i < n && q.lenLocked() > 0; i++ {
		q.bytes -= q.items[q.head].Cost()
		q.items[q.head] = nil
		q.head++
	}
	if q.head > 1024 && q.head*2 > len(q.items) {
		q.items = append([]*Record(nil), q.items[q.head:]...)
		q.head = 0
	}
	// Blocked producers are woken only once an eighth of the queue is free
	// again: waking all of them for every record taken makes a herd that
	// costs more than the sending.
	if q.space != nil && q.lenLocked() <= q.maxMsgs-q.maxMsgs/8 && q.bytes <= q.maxBytes-q.maxBytes/8 {
		q.wakeProducers()
	}
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
	rest := append([]*Record(nil), q.items[q.head:]...)
	q.items, q.head, q.bytes = nil, 0, 0
	q.wakeProducers()
	q.wakeConsumer()
	return rest
}
