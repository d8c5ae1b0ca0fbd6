package tbtest

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener is a mochi listener over a net.Listener that tracks every accepted
// socket, so Stop can cut all of them (even those that never sent CONNECT)
// and wait until mochi's per-connection goroutines have returned.
type listener struct {
	id  string
	ln  net.Listener
	log *slog.Logger

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id string, ln net.Listener) *listener {
	return &listener{id: id, ln: ln, conns: map[net.Conn]struct{}{}, log: slog.New(slog.DiscardHandler)}
}

func (l *listener) Init(log *slog.Logger) error {
	if log != nil {
		l.log = log
	}
	return nil
}

func (l *listener) ID() string       { return l.id }
func (l *listener) Address() string  { return l.ln.Addr().String() }
func (l *listener) Protocol() string { return "tcp" }

func (l *listener) Serve(establish listeners.EstablishFn) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = c.Close()
			return
		}
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			err := establish(l.id, c)
			_ = c.Close()
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
			if err != nil {
				l.log.Debug("tbtest: connection ended", "error", err)
			}
		}()
	}
}

// Close is called by mochi's Server.Close.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.shutdown()
	closeClients(l.id)
}

// shutdown stops accepting, closes every accepted socket and waits for the
// connection goroutines to finish.
func (l *listener) shutdown() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		_ = l.ln.Close()
		for c := range l.conns {
			_ = c.Close()
		}
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// listenTCP binds addr, retrying for up to retry while the address is still
// in use (rebinding the same port after Stop).
func listenTCP(addr string, retry time.Duration) (net.Listener, error) {
	deadline := time.Now().Add(retry)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
