// Package netproxy is a loopback TCP proxy that injects network faults and
// latency between a client and a server, for tests and benchmarks: a link
// that adds a round-trip time without limiting throughput, a link that goes
// silently dead (Blackhole), a cut of every connection (Cut) and a server
// that cannot be reached (Refuse).
//
// Latency is a delay line, not a sleep per chunk: for each direction of a
// connection one goroutine reads, stamps every chunk with the time it may
// leave (read time + rtt/2) and queues it; another writes each chunk when
// its time has come. Many chunks are thus on their way at once, as bytes on
// a long wire are, so a 100 ms proxy still forwards hundreds of MB/s. The
// queue of each direction is bounded (64 MiB); beyond that the reader stops
// reading, so TCP flow control pushes back on the sender.
//
// When one side ends its connection (EOF or an error), the proxy writes
// what it still holds for the other side, then closes that side too; a
// half-close is not passed on as such, because the protocols under test
// (MQTT) close both ways at once. The TCP handshake itself is not delayed:
// the kernel completes it before the proxy accepts the connection, so a
// client's dial returns at once and its first bytes pay the latency.
package netproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by WaitAccepted once the proxy is closed.
var ErrClosed = errors.New("netproxy: proxy closed")

// queueLimit bounds the bytes queued in one direction of one connection.
// At the read rate r and one-way delay d the delay line holds r×d bytes,
// so 64 MiB carries 1.3 GB/s at 50 ms before it pushes back.
const queueLimit = 64 << 20

// readSize is the largest chunk read at once.
const readSize = 64 << 10

// dialTimeout bounds the connection to the target, which is on loopback:
// when it takes longer, the target is not listening.
const dialTimeout = 10 * time.Second

// Option configures a Proxy created by New.
type Option func(*Proxy)

// WithLatency makes the proxy add rtt to every round trip: rtt/2 in each
// direction. It is the initial value of SetLatency.
func WithLatency(rtt time.Duration) Option {
	return func(p *Proxy) { p.SetLatency(rtt) }
}

// Proxy forwards TCP connections from a loopback port to a target, with
// faults and latency switched on and off at run time. All methods are safe
// for concurrent use. Create it with New and release it with Close.
type Proxy struct {
	target string
	ln     net.Listener
	oneWay atomic.Int64 // delay of each direction, in nanoseconds

	// gate is closed while data flows and open (blocking) while the link
	// is blackholed; readers and writers wait on it before every chunk.
	gate atomic.Pointer[chan struct{}]

	ctx    context.Context // cancelled by Close: aborts dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	mu        sync.Mutex
	closed    bool
	refuse    bool
	holed     bool
	links     map[*link]struct{}
	forwarded int         // links connected to the target and still open
	accepted  []time.Time // accept time of every forwarded connection
	acceptCh  chan struct{}
}

// New listens on 127.0.0.1:0 and forwards every accepted connection to
// target (host:port), dialled afresh for each. The proxy runs until Close.
func New(target string, opts ...Option) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("netproxy: target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("netproxy: listen: %w", err)
	}
	p := &Proxy{
		target:   target,
		ln:       ln,
		links:    map[*link]struct{}{},
		acceptCh: make(chan struct{}),
	}
	open := make(chan struct{})
	close(open)
	p.gate.Store(&open)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for _, o := range opts {
		if o != nil {
			o(p)
		}
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address clients connect to, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns Addr as an MQTT broker URL, "tcp://127.0.0.1:port".
func (p *Proxy) URL() string { return "tcp://" + p.Addr() }

// SetLatency sets the round-trip time the proxy adds: rtt/2 in each
// direction (rtt <= 0 adds none). It applies to bytes read from now on,
// on current and future connections; bytes already queued keep their time,
// and order is always kept, so lowering it lets no byte overtake another.
func (p *Proxy) SetLatency(rtt time.Duration) {
	p.oneWay.Store(int64(max(rtt, 0) / 2))
}

// Blackhole turns a silently dead link on or off. While on, the proxy
// neither reads from nor writes to any socket, and closes nothing: both
// peers' connections stay open, their TCP buffers fill and their writes
// eventually block, as over a link whose packets are all lost. Data is
// held, not dropped: a chunk the proxy had already read is delivered after
// the blackhole ends, as TCP would retransmit it over a link that came
// back. New connections are still accepted (the kernel completes the
// handshake anyway) but no byte flows on them either. When switched off,
// forwarding resumes where it stopped.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.holed {
		return
	}
	p.holed = on
	if on {
		shut := make(chan struct{})
		p.gate.Store(&shut)
		return
	}
	close(*p.gate.Load())
}

// Cut closes every current connection on both sides at once, dropping
// whatever the proxy still holds for them, as a network failure that both
// ends notice. The proxy keeps listening: new connections are forwarded
// (unless Refuse is on).
func (p *Proxy) Cut() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.kill()
	}
}

// Refuse, while on, closes every newly accepted connection at once without
// contacting the target, so a client sees its connection end before any
// byte (a server that cannot be reached). Existing connections are not
// affected; refused connections do not count in Accepted.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = on
}

// Accepted returns how many connections have been accepted and forwarded
// to the target since New. A benchmark reads it before a fault and waits
// for the next one with WaitAccepted.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.accepted)
}

// WaitAccepted waits until n connections in all (counting from 1, in the
// order they were connected to the target) have been accepted and
// forwarded, and returns the time the n-th was accepted. It fails with
// ctx's error, or ErrClosed once the proxy is closed. A counter rather than
// a channel, so that no accept is ever missed or blocks the proxy when
// nobody listens.
func (p *Proxy) WaitAccepted(ctx context.Context, n int) (time.Time, error) {
	if n < 1 {
		return time.Time{}, fmt.Errorf("netproxy: WaitAccepted(%d): n counts from 1", n)
	}
	for {
		p.mu.Lock()
		if len(p.accepted) >= n {
			at := p.accepted[n-1]
			p.mu.Unlock()
			return at, nil
		}
		closed, ch := p.closed, p.acceptCh
		p.mu.Unlock()
		if closed {
			return time.Time{}, ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// Conns returns the number of forwarded connections currently open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forwarded
}

// Close stops listening, closes every connection and returns once all the
// proxy's goroutines have ended. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.acceptCh) // wakes WaitAccepted, which then sees closed
	p.mu.Unlock()
	err := p.ln.Close()
	p.cancel()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) delay() time.Duration { return time.Duration(p.oneWay.Load()) }

// waitOpen waits while the link is blackholed; false when l was killed.
func (p *Proxy) waitOpen(l *link) bool {
	select {
	case <-*p.gate.Load():
		return true
	case <-l.done:
		return false
	}
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure (out of file descriptors): back off a
			// little rather than spin.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		at := time.Now()
		p.mu.Lock()
		if p.closed || p.refuse {
			p.mu.Unlock()
			_ = c.Close()
			continue // after Close, the next Accept fails
		}
		l := newLink(p.ctx, c, at)
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// serve dials the target for l and runs its two directions until both end.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	counted := false
	defer func() {
		l.kill()
		p.mu.Lock()
		delete(p.links, l)
		if counted {
			p.forwarded--
		}
		p.mu.Unlock()
	}()
	d := net.Dialer{Timeout: dialTimeout}
	srv, err := d.DialContext(l.ctx, "tcp", p.target)
	if err != nil {
		return
	}
	if !l.attach(srv) {
		return // cut or closed while dialling
	}
	p.mu.Lock()
	counted = true
	p.forwarded++
	p.accepted = append(p.accepted, l.at)
	if !p.closed {
		close(p.acceptCh)
		p.acceptCh = make(chan struct{})
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); p.readLoop(l, l.client, l.up) }()
	go func() { defer wg.Done(); p.writeLoop(l, srv, l.up) }()
	go func() { defer wg.Done(); p.readLoop(l, srv, l.down) }()
	p.writeLoop(l, l.client, l.down)
	wg.Wait()
}

// readLoop is the entry of one direction's delay line: it reads src and
// queues each chunk stamped with the time it may be written. It ends at
// EOF or a read error, telling the writer that nothing more will come.
func (p *Proxy) readLoop(l *link, src net.Conn, q *queue) {
	defer q.closeWrite()
	buf := make([]byte, readSize)
	for {
		if !p.waitOpen(l) {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			// A copy of the exact size: the queue's byte bound is then
			// also a bound on memory, however small the reads.
			c := chunk{data: append([]byte(nil), buf[:n]...), due: time.Now().Add(p.delay())}
			if !q.push(c) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// writeLoop is the exit of one direction's delay line: it writes each
// chunk to dst once its time has come. When the reader has ended and
// everything queued was written, it closes dst, which ends the other
// direction in turn. A write error kills the whole connection.
func (p *Proxy) writeLoop(l *link, dst net.Conn, q *queue) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		c, ok := q.pop()
		if !ok {
			break
		}
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.done:
				return
			}
		}
		if !p.waitOpen(l) {
			return
		}
		_, err := dst.Write(c.data)
		q.release(len(c.data))
		if err != nil {
			l.kill()
			return
		}
	}
	_ = dst.Close()
}

// link is one client connection and its connection to the target.
type link struct {
	client net.Conn
	at     time.Time // when the client connection was accepted
	up     *queue    // client → target
	down   *queue    // target → client
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed by kill

	mu     sync.Mutex
	server net.Conn
	dead   bool
}

func newLink(parent context.Context, c net.Conn, at time.Time) *link {
	l := &link{client: c, at: at, up: newQueue(queueLimit), down: newQueue(queueLimit), done: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancel(parent)
	return l
}

// attach sets the target connection; false (and srv closed) if l is dead.
func (l *link) attach(srv net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		_ = srv.Close()
		return false
	}
	l.server = srv
	return true
}

// kill closes both sides at once and wakes every goroutine of l. It is
// idempotent.
func (l *link) kill() {
	l.mu.Lock()
	if l.dead {
		l.mu.Unlock()
		return
	}
	l.dead = true
	srv := l.server
	l.mu.Unlock()
	close(l.done)
	l.cancel()
	_ = l.client.Close()
	if srv != nil {
		_ = srv.Close()
	}
	l.up.abort()
	l.down.abort()
}

// chunk is bytes read at once, and when they may be written.
type chunk struct {
	data []byte
	due  time.Time
}

// queue is one direction's delay line: a FIFO of chunks bounded in bytes.
// Bytes count from push until written (release), so a writer blocked on a
// slow peer holds back the reader too.
type queue struct {
	mu      sync.Mutex
	cond    sync.Cond
	chunks  []chunk
	head    int
	bytes   int
	limit   int
	eof     bool // the reader ended: nothing more will be pushed
	aborted bool // the connection was killed
}

func newQueue(limit int) *queue {
	q := &queue{limit: limit}
	q.cond.L = &q.mu
	return q
}

// push appends c, waiting while the queue is full; a chunk larger than
// the limit is accepted into an empty queue. false once aborted.
func (q *queue) push(c chunk) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.aborted && q.bytes > 0 && q.bytes+len(c.data) > q.limit {
		q.cond.Wait()
	}
	if q.aborted {
		return false
	}
	q.chunks = append(q.chunks, c)
	q.bytes += len(c.data)
	q.cond.Broadcast()
	return true
}

// pop removes the oldest chunk, waiting for one; false when the queue is
// drained after the reader ended, or aborted.
func (q *queue) pop() (chunk, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.aborted && !q.eof && q.head == len(q.chunks) {
		q.cond.Wait()
	}
	if q.aborted || q.head == len(q.chunks) {
		return chunk{}, false
	}
	c := q.chunks[q.head]
	q.chunks[q.head] = chunk{}
	q.head++
	if q.head == len(q.chunks) {
		q.chunks, q.head = q.chunks[:0], 0
	} else if q.head >= 1024 && q.head*2 >= len(q.chunks) {
		// Reclaim the consumed front of a long-lived backlog.
		n := copy(q.chunks, q.chunks[q.head:])
		clear(q.chunks[n:])
		q.chunks, q.head = q.chunks[:n], 0
	}
	return c, true
}

// release returns the room of n written bytes.
func (q *queue) release(n int) {
	q.mu.Lock()
	q.bytes -= n
	q.cond.Broadcast()
	q.mu.Unlock()
}

// closeWrite marks the end of the stream; pop drains what is left first.
func (q *queue) closeWrite() {
	q.mu.Lock()
	q.eof = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// abort drops everything queued and wakes both ends for good.
func (q *queue) abort() {
	q.mu.Lock()
	q.aborted = true
	q.chunks, q.head = nil, 0
	q.cond.Broadcast()
	q.mu.Unlock()
}
