package netproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain checks that proxies and the tests' servers leave no goroutine
// behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// target is a loopback TCP server for the proxy to forward to. Every
// connection is handed to handle; Cleanup closes the listener and every
// connection and waits for the handlers.
type target struct {
	ln    net.Listener
	conns chan net.Conn // every accepted connection, for the test to inspect
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  map[net.Conn]struct{}
}

func newTarget(t *testing.T, handle func(net.Conn)) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &target{ln: ln, conns: make(chan net.Conn, 64), open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open[c] = struct{}{}
			s.mu.Unlock()
			select {
			case s.conns <- c:
			default:
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					_ = c.Close()
					s.mu.Lock()
					delete(s.open, c)
					s.mu.Unlock()
				}()
				handle(c)
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *target) addr() string { return s.ln.Addr().String() }

func (s *target) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// echo writes back everything it reads until EOF.
func echo(c net.Conn) { _, _ = io.Copy(c, c) }

func newProxy(t *testing.T, target string, opts ...Option) *Proxy {
	t.Helper()
	p, err := New(target, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// deadline bounds a blocking read or write that must not hang the test if
// the proxy is broken; it is never what a test asserts on.
func deadline(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
}

// roundTrip sends msg and reads it back from an echo target.
func roundTrip(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	deadline(t, c)
	_, err := c.Write(msg)
	require.NoError(t, err)
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, msg, got)
}

func TestNewRejectsBadTarget(t *testing.T) {
	_, err := New("no-port")
	require.Error(t, err)
}

func TestAddrAndURL(t *testing.T) {
	p := newProxy(t, newTarget(t, echo).addr())
	host, _, err := net.SplitHostPort(p.Addr())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.Equal(t, "tcp://"+p.Addr(), p.URL())
}

// TestForwardsIntact sends a large random payload each way at once, with
// and without latency, and compares what arrives.
func TestForwardsIntact(t *testing.T) {
	for _, rtt := range []time.Duration{0, 10 * time.Millisecond} {
		t.Run(rtt.String(), func(t *testing.T) {
			p := newProxy(t, newTarget(t, echo).addr(), WithLatency(rtt))
			c := dial(t, p)
			deadline(t, c)
			payload := make([]byte, 8<<20)
			_, err := rand.Read(payload)
			require.NoError(t, err)
			werr := make(chan error, 1)
			go func() {
				_, err := c.Write(payload)
				werr <- err
			}()
			got := make([]byte, len(payload))
			_, err = io.ReadFull(c, got)
			require.NoError(t, err)
			require.NoError(t, <-werr)
			require.True(t, bytes.Equal(payload, got), "payload changed on the way")
			require.Equal(t, 1, p.Conns())
			require.Equal(t, 1, p.Accepted())
		})
	}
}

// TestLatencyLowerBound: a round trip through a 40 ms proxy takes at least
// 40 ms, also after SetLatency. Only lower bounds are checked: a loaded
// machine may add any amount of time.
func TestLatencyLowerBound(t *testing.T) {
	p := newProxy(t, newTarget(t, echo).addr(), WithLatency(40*time.Millisecond))
	c := dial(t, p)
	for range 3 {
		start := time.Now()
		roundTrip(t, c, []byte("ping"))
		require.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond)
	}
	p.SetLatency(0)
	roundTrip(t, c, []byte("fast"))
	p.SetLatency(60 * time.Millisecond)
	start := time.Now()
	roundTrip(t, c, []byte("slow again"))
	require.GreaterOrEqual(t, time.Since(start), 60*time.Millisecond)
}

// TestLatencyDoesNotLimitThroughput sends 8 MiB through a 100 ms proxy. A
// proxy that held each chunk for the delay before reading the next would
// need at least 8 MiB / 64 KiB × 50 ms = 6.4 s; the delay line needs about
// one delay plus the copying. The bound is loose so that it cannot flake.
func TestLatencyDoesNotLimitThroughput(t *testing.T) {
	const size = 8 << 20
	got := make(chan int64, 1)
	tg := newTarget(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		got <- n
	})
	p := newProxy(t, tg.addr(), WithLatency(100*time.Millisecond))
	c := dial(t, p)
	deadline(t, c)
	_, err := io.CopyN(c, rand.Reader, size)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	select {
	case n := <-got:
		require.EqualValues(t, size, n)
	case <-time.After(10 * time.Second):
		t.Fatal("8 MiB took more than 10 s through a 100 ms proxy: latency limits throughput")
	}
}

// TestCloseIsForwardedAfterFlush: when the target sends data and closes,
// the client gets all of it, then EOF, and the other way round.
func TestCloseIsForwardedAfterFlush(t *testing.T) {
	msg := make([]byte, 1<<20)
	_, err := rand.Read(msg)
	require.NoError(t, err)
	received := make(chan []byte, 1)
	tg := newTarget(t, func(c net.Conn) {
		b, _ := io.ReadAll(c) // until the client's close arrives
		received <- b
	})
	p := newProxy(t, tg.addr(), WithLatency(20*time.Millisecond))
	c := dial(t, p)
	deadline(t, c)
	_, err = c.Write(msg)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	select {
	case b := <-received:
		require.True(t, bytes.Equal(msg, b), "target got %d of %d bytes", len(b), len(msg))
	case <-time.After(10 * time.Second):
		t.Fatal("the client's close never reached the target")
	}

	tg2 := newTarget(t, func(c net.Conn) { _, _ = c.Write(msg) })
	p2 := newProxy(t, tg2.addr(), WithLatency(20*time.Millisecond))
	c2 := dial(t, p2)
	deadline(t, c2)
	b, err := io.ReadAll(c2) // nil error: EOF after everything
	require.NoError(t, err)
	require.True(t, bytes.Equal(msg, b), "client got %d of %d bytes", len(b), len(msg))
	require.Eventually(t, func() bool { return p.Conns() == 0 && p2.Conns() == 0 }, 10*time.Second, time.Millisecond)
}

// TestBlackhole: while on, nothing is delivered and nothing is closed;
// afterwards the held data arrives and forwarding goes on.
func TestBlackhole(t *testing.T) {
	p := newProxy(t, newTarget(t, echo).addr())
	c := dial(t, p)
	roundTrip(t, c, []byte("before"))

	p.Blackhole(true)
	deadline(t, c)
	_, err := c.Write([]byte("held"))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(150*time.Millisecond)))
	n, err := c.Read(make([]byte, 16))
	require.Zero(t, n, "data went through a blackhole")
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Equal(t, 1, p.Conns(), "a blackhole closes nothing")

	// A connection made meanwhile stays silent too.
	c2 := dial(t, p)
	deadline(t, c2)
	_, err = c2.Write([]byte("new"))
	require.NoError(t, err)
	require.NoError(t, c2.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	n, err = c2.Read(make([]byte, 16))
	require.Zero(t, n)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	p.Blackhole(false)
	deadline(t, c)
	got := make([]byte, 4)
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, "held", string(got))
	roundTrip(t, c, []byte("after"))
	deadline(t, c2)
	got = make([]byte, 3)
	_, err = io.ReadFull(c2, got)
	require.NoError(t, err)
	require.Equal(t, "new", string(got))
}

// TestCut closes both sides of every connection; the proxy then forwards
// new connections.
func TestCut(t *testing.T) {
	tg := newTarget(t, echo)
	p := newProxy(t, tg.addr(), WithLatency(10*time.Millisecond))
	c1, c2 := dial(t, p), dial(t, p)
	roundTrip(t, c1, []byte("one"))
	roundTrip(t, c2, []byte("two"))
	s1, s2 := <-tg.conns, <-tg.conns // the target's sides
	require.Equal(t, 2, p.Conns())

	p.Cut()
	for _, c := range []net.Conn{c1, c2, s1, s2} {
		// The target's handler may have closed its side already.
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		require.Error(t, err, "a cut connection is closed on both sides")
		require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "closed, not merely silent: %v", err)
	}
	require.Eventually(t, func() bool { return p.Conns() == 0 }, 10*time.Second, time.Millisecond)

	c3 := dial(t, p)
	roundTrip(t, c3, []byte("three"))
	require.Equal(t, 3, p.Accepted())
}

// TestRefuse: refused connections close before any byte and never reach
// the target; WaitAccepted reports the next forwarded one.
func TestRefuse(t *testing.T) {
	tg := newTarget(t, echo)
	p := newProxy(t, tg.addr())
	p.Refuse(true)
	c := dial(t, p)
	deadline(t, c)
	_, _ = c.Write([]byte("anyone?"))
	_, err := c.Read(make([]byte, 1))
	require.Error(t, err)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "refused means closed: %v", err)
	require.Equal(t, 0, p.Accepted())
	select {
	case <-tg.conns:
		t.Fatal("a refused connection reached the target")
	default:
	}

	p.Refuse(false)
	before := time.Now()
	c2 := dial(t, p)
	roundTrip(t, c2, []byte("hello"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	at, err := p.WaitAccepted(ctx, 1)
	require.NoError(t, err)
	require.False(t, at.Before(before))
	require.Equal(t, 1, p.Accepted())
}

// TestWaitAccepted waits for a connection made later, and gives up with
// its context or Close.
func TestWaitAccepted(t *testing.T) {
	p := newProxy(t, newTarget(t, echo).addr())
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := p.WaitAccepted(ctx, 1)
		got <- err
	}()
	dial(t, p)
	require.NoError(t, <-got)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.WaitAccepted(ctx, 2)
	require.ErrorIs(t, err, context.Canceled)
	_, err = p.WaitAccepted(context.Background(), 0)
	require.Error(t, err)

	go func() {
		_, err := p.WaitAccepted(context.Background(), 2)
		got <- err
	}()
	require.NoError(t, p.Close())
	require.ErrorIs(t, <-got, ErrClosed)
}

// TestCloseLeavesNothing closes a proxy in the middle of everything:
// blackholed, with data held in its queues, connections open, readers and
// writers blocked. Every goroutine ends and both sides are closed.
func TestCloseLeavesNothing(t *testing.T) {
	tg := newTarget(t, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c)
	})
	ignore := goleak.IgnoreCurrent()
	p, err := New(tg.addr(), WithLatency(200*time.Millisecond))
	require.NoError(t, err)
	c1, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c1.Close()
	deadline(t, c1)
	_, err = c1.Write(make([]byte, 1<<20)) // queued on the delay line
	require.NoError(t, err)
	p.Blackhole(true)
	c2, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = p.WaitAccepted(ctx, 2)
	require.NoError(t, err)

	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "Close is idempotent")
	require.Equal(t, 0, p.Conns())
	for _, c := range []net.Conn{c1, c2} {
		deadline(t, c)
		_, err := c.Read(make([]byte, 1))
		require.Error(t, err)
		require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "closed, not merely silent: %v", err)
	}
	tg.close() // the target's handlers end with the proxy's connections
	goleak.VerifyNone(t, ignore)
}

// BenchmarkThroughput streams through a 50 ms proxy: the figure is the
// delay line's throughput, which latency must not bound.
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	p, err := New(ln.Addr().String(), WithLatency(50*time.Millisecond))
	require.NoError(b, err)
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(b, err)
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		for sent := 0; sent < size; sent += len(buf) {
			_, err := c.Write(buf)
			require.NoError(b, err)
		}
	}
	require.NoError(b, c.Close())
	require.EqualValues(b, int64(b.N)*size, <-got)
}
