// Package dispatch runs user callbacks away from paho's network goroutine.
//
// A Lane is a bounded queue drained by a fixed number of goroutines. Submit
// never blocks: when the queue is full the job is refused and the caller
// counts it, so a slow handler can delay its own lane but never the
// connection.
package dispatch

import (
	"runtime/debug"
	"sync"
)

// Lane is a bounded job queue with its own workers.
type Lane struct {
	mu      sync.RWMutex
	jobs    chan func()
	closed  bool
	wg      sync.WaitGroup
	onPanic func(v any, stack []byte)
}

// NewLane starts workers goroutines serving a queue of size jobs. onPanic,
// if not nil, is told about every recovered panic.
func NewLane(workers, size int, onPanic func(v any, stack []byte)) *Lane {
	if workers < 1 {
		workers = 1
	}
	if size < 1 {
		size = 1
	}
	l := &Lane{jobs: make(chan func(), size), onPanic: onPanic}
	l.wg.Add(workers)
	for range workers {
		go l.work()
	}
	return l
}

func (l *Lane) work() {
	defer l.wg.Done()
	for job := range l.jobs {
		l.run(job)
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

// Submit queues job and reports whether it was accepted. It is false when
// the queue is full or the lane is closed.
func (l *Lane) Submit(job func()) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return false
	}
	select {
	case l.jobs <- job:
		return true
	default:
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
