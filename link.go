package tbgateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingsgate/tbgateway/internal/outbox"
)

// link is one MQTT connection: the narrow boundary between the session and
// the MQTT client. The session opens a new link for every connection and
// never reuses one, so that no client-side state (paho's store, its resend
// of in-flight messages, its reconnect loop) outlives a connection. An MQTT
// 5 client would implement the same few calls.
type link interface {
	// publish hands one message to the connection and returns paho's
	// token. It may block (paho waits up to its write timeout for its
	// writer), so the sender uses send instead.
	publish(topic string, qos byte, payload []byte) pubToken
	// send queues a QoS 1 message, already expected by the tracker, for
	// the link's own goroutine to publish: a publish that blocks on a
	// connection that just died holds up only that goroutine, not the
	// sender, which goes on with the next connection. What the link never
	// acknowledged comes back through the tracker's TakeBack.
	send(m *outbox.Message)
	// release ends the link's goroutine (after TakeBack), waits for it
	// up to d, and reports whether it ended.
	release(d time.Duration) bool
	// subscribeAsync sends one SUBSCRIBE for filters; the token
	// completes with its SUBACK.
	subscribeAsync(filters map[string]byte) pubToken
	// tracker is the store that binds this connection's PUBACKs to
	// messages.
	tracker() *outbox.Tracker
	// lost receives once when the connection ends without close.
	lost() <-chan error
	// idle is how long nothing was read from the server.
	idle() time.Duration
	// kill closes the socket at once, as a dead peer would: the end is
	// then reported on lost.
	kill()
	// wait waits, at most d, for the end of a killed link.
	wait(d time.Duration)
	// close ends the connection cleanly (DISCONNECT), waiting at most
	// quiesce for paho to finish what it is writing.
	close(quiesce time.Duration)
}

// pubToken is what publish returns: mqtt.Token satisfies it.
type pubToken interface {
	Done() <-chan struct{}
	Error() error
}

// pahoLink is a link over paho.mqtt.golang (MQTT 3.1.1).
type pahoLink struct {
	c      mqtt.Client
	tr     *outbox.Tracker
	lostCh chan error

	mu   sync.Mutex
	conn net.Conn // the socket, once opened

	lastRead atomic.Int64 // unix nanoseconds

	out      chan *outbox.Message // to the pump
	quit     chan struct{}        // closed by release
	quitOnce sync.Once
	pumped   chan struct{} // closed when the pump ends
}

// dialer opens links with fixed paho options.
type dialer struct {
	po   *mqtt.ClientOptions
	user mqtt.OpenConnectionFunc // the user's socket opener, if any
}

// newDialer prepares the paho options every connection shares. paho's
// own reconnecting is off: the session reconnects, with a new client.
func newDialer(g *Gateway, u *url.URL) *dialer {
	o := &g.opts
	po := mqtt.NewClientOptions().
		AddBroker(u.String()).
		SetClientID(o.clientID).
		SetUsername(o.username).
		SetPassword(o.password).
		SetKeepAlive(o.keepAlive).
		// A quarter of the keep-alive: paho's check runs every quarter,
		// so a missing PINGRESP ends the link within 1.5 × keep-alive.
		SetPingTimeout(o.keepAlive / 4).
		SetConnectTimeout(o.connectTimeout).
		SetWriteTimeout(o.connectTimeout).
		SetCleanSession(true).
		SetOrderMatters(true).
		SetDefaultPublishHandler(g.onMessage)
	if t := o.tls(); t != nil {
		po.SetTLSConfig(t)
	}
	for _, f := range o.paho {
		f(po)
	}
	// Whatever the escape hatch set: one connection per client.
	po.SetAutoReconnect(false).SetConnectRetry(false)
	return &dialer{po: po, user: po.CustomOpenConnectionFn}
}

// openSocket opens the network connection as paho would for the URL's
// scheme; ctx (the gateway's life) aborts a dial that hangs.
func openSocket(ctx context.Context, uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
	nd := &net.Dialer{Timeout: o.ConnectTimeout}
	if o.Dialer != nil {
		nd = o.Dialer
	}
	switch uri.Scheme {
	case "tcp", "mqtt":
		return nd.DialContext(ctx, "tcp", uri.Host)
	case "ssl", "tls", "mqtts", "tcps":
		cfg := o.TLSConfig
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		td := &tls.Dialer{NetDialer: nd, Config: cfg}
		return td.DialContext(ctx, "tcp", uri.Host)
	case "ws", "wss":
		u := *uri
		u.User = nil
		var cfg *tls.Config
		if uri.Scheme == "wss" {
			cfg = o.TLSConfig
		}
		return mqtt.NewWebsocket(u.String(), cfg, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	}
	return nil, fmt.Errorf("unknown scheme %q", uri.Scheme)
}

// dial opens one connection and waits for its CONNACK, until ctx ends.
// window bounds the messages queued for the link's pump.
func (d *dialer) dial(ctx context.Context, onAck func(*outbox.Message), window int) (*pahoLink, error) {
	l := &pahoLink{tr: outbox.NewTracker(onAck), lostCh: make(chan error, 1)}
	l.lastRead.Store(time.Now().UnixNano())
	po := *d.po
	po.SetStore(l.tr)
	po.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		select {
		case l.lostCh <- err:
		default:
		}
	})
	po.SetCustomOpenConnectionFn(func(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
		var c net.Conn
		var err error
		if d.user != nil {
			c, err = d.user(uri, o)
		} else {
			c, err = openSocket(ctx, uri, o)
		}
		if err != nil {
			return nil, err
		}
		rc := &readConn{Conn: c, last: &l.lastRead}
		l.mu.Lock()
		l.conn = rc
		l.mu.Unlock()
		return rc, nil
	})
	l.c = mqtt.NewClient(&po)
	tok := l.c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		l.kill()
		l.c.Disconnect(0)
		<-tok.Done()
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		l.c.Disconnect(0)
		if ct, ok := tok.(*mqtt.ConnectToken); ok && ct.ReturnCode() >= 1 && ct.ReturnCode() <= 5 {
			return nil, &ConnectError{Code: ct.ReturnCode(), Err: err}
		}
		return nil, err
	}
	l.lastRead.Store(time.Now().UnixNano()) // a slow CONNACK is not silence
	l.out, l.quit, l.pumped = make(chan *outbox.Message, window), make(chan struct{}), make(chan struct{})
	go l.pump()
	return l, nil
}

// pump publishes what send queued, in order. A publish paho refuses (not
// connected, or its writer stuck for the whole write timeout) ends the
// link: the session then takes everything back and starts over.
func (l *pahoLink) pump() {
	defer close(l.pumped)
	for {
		select {
		case m := <-l.out:
			tok := l.c.Publish(m.Topic, 1, false, m.Payload)
			select {
			case <-tok.Done():
				if tok.Error() != nil {
					l.kill()
				}
			default:
			}
		case <-l.quit:
			return
		}
	}
}

func (l *pahoLink) send(m *outbox.Message) {
	select {
	case l.out <- m:
	case <-l.quit:
		// Released: TakeBack has m already.
	}
}

func (l *pahoLink) release(d time.Duration) bool {
	l.quitOnce.Do(func() { close(l.quit) })
	select {
	case <-l.pumped:
		return true
	default:
	}
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-l.pumped:
		return true
	case <-t.C:
		return false
	}
}

// wait gives paho up to d to finish with a link that was killed.
func (l *pahoLink) wait(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-l.lostCh:
	case <-t.C:
	}
}

func (l *pahoLink) publish(topic string, qos byte, payload []byte) pubToken {
	return l.c.Publish(topic, qos, false, payload)
}

func (l *pahoLink) subscribeAsync(filters map[string]byte) pubToken {
	return l.c.SubscribeMultiple(filters, nil)
}

func (l *pahoLink) tracker() *outbox.Tracker { return l.tr }
func (l *pahoLink) lost() <-chan error       { return l.lostCh }

func (l *pahoLink) idle() time.Duration {
	return time.Duration(time.Now().UnixNano() - l.lastRead.Load())
}

func (l *pahoLink) kill() {
	l.mu.Lock()
	c := l.conn
	l.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

func (l *pahoLink) close(quiesce time.Duration) {
	done := make(chan struct{})
	go func() {
		l.c.Disconnect(uint(quiesce / time.Millisecond))
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(quiesce + time.Second):
		// A writer stuck on a dead socket: closing it frees paho.
		l.kill()
		<-done
	}
}

// readConn notes when bytes last came from the server, so that a link
// that silently stopped delivering is noticed (errHalfOpen) even while
// paho's keep-alive writer is stuck behind a full socket buffer.
type readConn struct {
	net.Conn
	last *atomic.Int64
}

func (c *readConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// errHalfOpen ends a link on which nothing arrived for too long.
var errHalfOpen = errors.New("tbgateway: nothing received within 1.5 × keep-alive; link presumed dead")
