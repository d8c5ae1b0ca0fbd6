// Package dispatch runs user callbacks away from paho's network goroutine.
//
// A Lane is a queue bounded in jobs and in bytes (what the caller says
// each job holds, such as a received payload), drained by a fixed number
// of goroutines. Submit never blocks: when the queue is full the job is
// refused and the caller counts it, so a slow handler can delay its own
// lane but never the connection or grow memory without bound.
package dispatch

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Lane is a bounded job queue with its own workers.
type Lane struct {
	mu       sync.RWMutex
	jobs     chan job
	closed   bool
	bytes    atomic.Int64
	maxBytes int64
	wg       sync.WaitGroup
	onPanic  func(v any, stack []byte)
}

type job struct {
	run   func()
	bytes int64
}

// NewLane starts workers goroutines serving a queue of at most size jobs
// holding maxBytes together (0: no byte bound). onPanic, if not nil, is
// told about every recovered panic.
func NewLane(workers, size, maxBytes int, onPanic func(v any, stack []byte)) *Lane {
	if workers < 1 {
		workers = 1
	}
	if size < 1 {
		size = 1
	}
	l := &Lane{jobs: make(chan job, size), maxBytes: int64(maxBytes), onPanic: onPanic}
	l.wg.Add(workers)
	for range workers {
		go l.work()
	}
	return l
}

func (l *Lane) work() {
	defer l.wg.Done()
	for j := range l.jobs {
		l.run(j.run)
		l.bytes.Add(-j.bytes)
	}
}

func (l *Lane) run(job func()) {
	defer func() {
		if v := recover(); v != nil && l.onPanic != nil {
			l.onPanic(v, debug.Stack())
		}
	}()
	job()
}

// Submit queues run, which holds bytes until it returns, and reports
// whether it was accepted. It is false when the queue is full (in jobs or
// bytes) or the lane is closed. A job alone over the byte bound is taken
// when the lane holds nothing else, so that no size is refused for ever.
func (l *Lane) Submit(run func(), bytes int) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return false
	}
	n := int64(bytes)
	if total := l.bytes.Add(n); l.maxBytes > 0 && total > l.maxBytes && total != n {
		l.bytes.Add(-n)
		return false
	}
	select {
	case l.jobs <- job{run, n}:
		return true
	default:
		l.bytes.Add(-n)
		return false
	}
}

// Close stops accepting jobs; queued jobs still run. Wait waits for them.
func (l *Lane) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.jobs)
	}
}

// Done returns a channel closed once every worker has exited after Close.
func (l *Lane) Done() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(ch)
	}()
	return ch
}
