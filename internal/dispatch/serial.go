package dispatch

import (
	"context"
	"runtime/debug"
	"sync"
)

// Serial runs jobs one at a time, in the order submitted, on one goroutine
// of its own. Submit never blocks and never refuses a job while open: the
// queue has no bound of its own, so whoever submits must bound it, by
// waiting while Len is high (the gateway's sender does, for the
// callbacks of acknowledged data). afterJob, if set, is called after every
// job, so that a producer that stopped for a long queue can look again.
type Serial struct {
	mu       sync.Mutex
	jobs     []func()
	head     int
	closed   bool
	wake     chan struct{}
	done     chan struct{}
	onPanic  func(v any, stack []byte)
	afterJob func()
	ran      chan struct{} // closed after the next job, while WaitBelow waits
}

// NewSerial starts a serial lane. onPanic, if not nil, is told about every
// recovered panic; afterJob, if not nil, is called on the lane's goroutine
// after every job (it must not block).
func NewSerial(onPanic func(v any, stack []byte), afterJob func()) *Serial {
	s := &Serial{wake: make(chan struct{}, 1), done: make(chan struct{}), onPanic: onPanic, afterJob: afterJob}
	go s.work()
	return s
}

// Submit queues job and reports whether it was accepted: false only once
// the lane is closed.
func (s *Serial) Submit(job func()) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.jobs = append(s.jobs, job)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// Len is the number of jobs waiting.
func (s *Serial) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.jobs) - s.head
}

func (s *Serial) next() (job func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.head == len(s.jobs) {
		if s.closed {
			return nil, false
		}
		// Give back what a burst grew.
		s.jobs, s.head = s.jobs[:0], 0
		if cap(s.jobs) > 1024 {
			s.jobs = nil
		}
		s.mu.Unlock()
		<-s.wake
		s.mu.Lock()
	}
	job = s.jobs[s.head]
	s.jobs[s.head] = nil
	s.head++
	return job, true
}

func (s *Serial) work() {
	defer close(s.done)
	for {
		job, ok := s.next()
		if !ok {
			return
		}
		s.run(job)
		s.mu.Lock()
		if s.ran != nil {
			close(s.ran)
			s.ran = nil
		}
		s.mu.Unlock()
		if s.afterJob != nil {
			s.afterJob()
		}
	}
}

func (s *Serial) run(job func()) {
	defer func() {
		if v := recover(); v != nil && s.onPanic != nil {
			s.onPanic(v, debug.Stack())
		}
	}()
	job()
}

// WaitUntil waits until ok holds (checked now and after every job), the
// lane is closed, ctx ends (its error) or stop is closed (nil).
func (s *Serial) WaitUntil(ctx context.Context, stop <-chan struct{}, ok func() bool) error {
	for {
		// Register for the next job's end before looking, so that a job
		// ending in between is not missed; ok runs without the lock.
		s.mu.Lock()
		if s.ran == nil {
			s.ran = make(chan struct{})
		}
		ran, closed := s.ran, s.closed
		s.mu.Unlock()
		if closed || ok() {
			return nil
		}
		select {
		case <-ran:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return nil
		}
	}
}

// Close stops accepting jobs; queued jobs still run.
func (s *Serial) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Done is closed once the lane's goroutine has run every job after Close.
func (s *Serial) Done() <-chan struct{} { return s.done }
