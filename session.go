package tbgateway

import (
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thingsgate/tbgateway/internal/pending"
	"github.com/thingsgate/tbgateway/internal/ratelimit"
)

// linkState is where the session is in a connection's life. Only the
// session's goroutine changes it, through transition.
type linkState uint8

const (
	linkIdle       linkState = iota // before the first attempt
	linkConnecting                  // waiting for a CONNACK
	linkStarting                    // connected: subscribing, asking the session limits
	linkUp                          // released: the sender announces and sends
	linkWaiting                     // lost or refused: backing off
	linkClosed                      // Close ended the session
)

func (s linkState) String() string {
	return [...]string{"idle", "connecting", "starting", "up", "waiting", "closed"}[s]
}

// linkEvent is what moves the session from one state to the next.
type linkEvent uint8

const (
	evDial      linkEvent = iota // the first attempt begins
	evConnected                  // CONNACK accepted
	evReleased                   // subscribed, limits known: data may flow
	evLost                       // the attempt failed or the connection ended
	evRetry                      // the back-off is over
	evClose                      // Close
)

// transition is the session's state machine; it reports false for an
// event that has no meaning in state s (which is then kept).
func transition(s linkState, e linkEvent) (linkState, bool) {
	switch {
	case s == linkClosed:
		return s, false
	case e == evClose:
		return linkClosed, true
	case s == linkIdle && e == evDial, s == linkWaiting && e == evRetry:
		return linkConnecting, true
	case s == linkConnecting && e == evConnected:
		return linkStarting, true
	case s == linkStarting && e == evReleased:
		return linkUp, true
	case (s == linkConnecting || s == linkStarting || s == linkUp) && e == evLost:
		return linkWaiting, true
	}
	return s, false
}

// publicState is the ConnectionState a listener is told of on entering
// state to from from, if any.
func publicState(from, to linkState) (ConnectionState, bool) {
	switch {
	case to == linkUp:
		return StateUp, true
	case to == linkWaiting && from == linkUp:
		return StateDown, true
	case to == linkConnecting && from == linkWaiting:
		return StateReconnecting, true
	}
	return 0, false
}

// Back-off between connection attempts: exponential from backoffBase,
// capped by WithMaxReconnectDelay, each delay drawn in its upper half so
// that a fleet does not reconnect in step. It starts over once a
// connection stayed up for stableAfter.
const (
	backoffBase = 250 * time.Millisecond
	stableAfter = 2 * time.Second
)

func backoff(attempt int, maxDelay time.Duration) time.Duration {
	d := maxDelay
	if attempt < 30 {
		d = min(maxDelay, backoffBase<<attempt)
	}
	return d/2 + rand.N(d/2+1)
}

// session owns the connection: its goroutine, run, dials, starts, watches
// and replaces links one after the other. paho's callbacks only post to
// the link it watches. The sender sends only on the link the session
// attached, so no data can pass a device's announcement or an unapplied
// limit.
type session struct {
	g      *Gateway
	dialer *dialer

	mu      sync.Mutex
	state   linkState
	changed chan struct{} // closed and replaced on every change of state
	upSince time.Time

	connects    int
	silent      bool // getSessionLimits went unanswered on an earlier connection
	limitsKnown bool // an answer was applied
	echoTopic   atomic.Pointer[string]
	echoed      chan struct{}

	lingering []link // released links whose goroutine may still run

	stopped chan struct{}
}

func newSession(g *Gateway, d *dialer) *session {
	return &session{g: g, dialer: d, changed: make(chan struct{}), stopped: make(chan struct{}), echoed: make(chan struct{}, 1)}
}

// apply moves the state machine and tells the listener.
func (s *session) apply(e linkEvent, err error) {
	s.mu.Lock()
	from := s.state
	to, ok := transition(from, e)
	if !ok {
		s.mu.Unlock()
		return
	}
	s.state = to
	if to == linkUp {
		s.upSince = time.Now()
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if ps, ok := publicState(from, to); ok {
		s.g.event(ConnectionEvent{State: ps, Err: err})
	}
}

// current returns the state and a channel closed when it changes.
func (s *session) current() (linkState, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.changed
}

// run is the session's goroutine. first, if not nil, receives the outcome
// of the first attempt (nil once the session is up); Dial waits on it.
func (s *session) run(first chan<- error) {
	defer close(s.stopped)
	defer func() {
		for _, l := range s.lingering {
			l.release(s.g.opts.connectTimeout + time.Second)
		}
	}()
	g := s.g
	report := func(err error) {
		if first != nil {
			first <- err
			first = nil
		}
	}
	s.apply(evDial, nil)
	for attempt := 0; ; {
		l, err := s.dialer.dial(g.life.ctx, g.out.onAck, g.opts.maxInflight)
		switch {
		case g.closed():
			report(ErrClosed)
			return
		case err != nil && s.connects == 0 && !g.opts.startOffline:
			report(err) // Dial fails as the first attempt did
			return
		case err != nil:
			g.log.Warn("tbgateway: connect failed", "err", err, "attempt", attempt+1)
			report(nil) // an offline start: Dial returns, the session goes on
			s.apply(evLost, err)
		default:
			s.apply(evConnected, nil)
			err = s.serve(l, report)
			if g.closed() {
				report(ErrClosed)
				return
			}
			if s.upFor() >= stableAfter {
				attempt = 0
			}
			s.apply(evLost, err)
			if errors.Is(err, errHalfOpen) {
				l.wait(time.Second) // paho's end of the link it was told of by the socket's close
			}
		}
		t := time.NewTimer(backoff(attempt, g.opts.maxReconnectDelay))
		select {
		case <-t.C:
		case <-g.life.done:
			t.Stop()
			report(ErrClosed)
			return
		}
		attempt++
		s.apply(evRetry, nil)
	}
}

func (s *session) upFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != linkUp {
		return 0
	}
	return time.Since(s.upSince)
}

// serve runs one connection: start it, release the sender on it, and
// watch it until it ends (its error) or the gateway closes (nil).
func (s *session) serve(l link, report func(error)) error {
	g := s.g
	s.connects++
	if s.connects > 1 {
		g.stats.reconnects.Add(1)
	}
	g.out.ownBucket.Charge(ratelimit.MessageCost(1)) // the server counts the session's open
	st, err := s.start(l)
	if err == nil {
		g.out.attach(l)
		s.apply(evReleased, nil)
		report(nil)
		g.log.Info("tbgateway: connected", "connects", s.connects)
		err = s.watch(l, st)
	}
	back := g.out.detach(l)
	closing := g.closed()
	if closing {
		l.close(250 * time.Millisecond)
	}
	// A publish stuck in paho on the dead link ends by paho's write
	// timeout at the latest; the session does not wait for it unless it
	// is closing.
	live := s.lingering[:0]
	for _, x := range append(s.lingering, l) {
		if !x.release(0) {
			live = append(live, x)
		}
	}
	s.lingering = live
	g.out.takeBack(back, closing)
	g.failPending(ErrConnectionLost)

	g.out.ownBucket.Charge(ratelimit.MessageCost(1)) // and its close
	if !closing {
		g.log.Warn("tbgateway: connection lost", "err", err, "taken_back", len(back))
	}
	return err
}

// started is what a connection's start left pending: its SUBACK and the
// limits answer, which watch takes in when they come.
type started struct {
	sub     pubToken
	subDone <-chan struct{}
	limits  <-chan pending.Reply[[]byte]
}

// start sends the SUBSCRIBE and the getSessionLimits request, both at
// once. On the first connection it waits for the answer (or a sign that
// none will come: a plain broker's echo, DefaultLimitsWait), so that data
// is paced from its first byte. Later connections keep the limits last
// applied and release the sender at once: the SUBSCRIBE and the request
// precede all data on the wire, so the server handles them first, and a
// changed answer is applied when it comes.
func (s *session) start(l link) (started, error) {
	g := s.g
	filters := make(map[string]byte, len(subscriptions)+2)
	for _, f := range subscriptions {
		filters[f] = g.opts.qos
	}
	if g.hs.upd != nil {
		for _, f := range g.hs.upd.subscriptions() {
			filters[f] = g.opts.qos
		}
	}
	st := started{sub: l.subscribeAsync(filters)}
	st.subDone = st.sub.Done()
	if g.opts.sessionLimits {
		st.limits = s.askLimits(l)
	}
	// Dial promises its subscriptions: the first connection waits for
	// the SUBACK too (a plain broker drops what comes before it).
	waitSub := s.connects == 1
	waitLimits := st.limits != nil && !s.limitsKnown && !s.silent
	if !waitSub && !waitLimits {
		return st, nil
	}
	limitsTimer := time.NewTimer(min(g.opts.requestTimeout, DefaultLimitsWait))
	defer limitsTimer.Stop()
	subTimer := time.NewTimer(g.opts.connectTimeout)
	defer subTimer.Stop()
	for (waitSub && st.subDone != nil) || (waitLimits && st.limits != nil) {
		select {
		case r := <-st.limits:
			s.applyLimits(r)
			st.limits = nil
		case <-st.subDone:
			s.subscribed(st.sub)
			st.subDone = nil
		case <-subTimeoutC(st.subDone, subTimer):
			l.kill()
			return st, errors.New("tbgateway: no SUBACK within the connect timeout")
		case <-s.echoed:
			// A plain MQTT broker handed our request back: no
			// ThingsBoard will answer it.
			s.silent, waitLimits = true, false
		case <-limitsTimeoutC(waitLimits, limitsTimer):
			g.log.Info("tbgateway: no session limits yet; sending under the configured ones")
			s.silent, waitLimits = true, false
		case err := <-l.lost():
			return st, err
		case <-g.life.done:
			return st, ErrClosed
		}
	}
	return st, nil
}

// limitsTimeoutC is the limits timer's channel while the answer is awaited.
func limitsTimeoutC(waiting bool, t *time.Timer) <-chan time.Time {
	if !waiting {
		return nil
	}
	return t.C
}

func (s *session) subscribed(sub pubToken) {
	if err := sub.Error(); err != nil {
		s.g.log.Warn("tbgateway: subscribe failed", "err", err)
	}
}

// askLimits sends getSessionLimits straight on the link (the sender is
// not released yet) and returns where its answer will arrive.
func (s *session) askLimits(l link) <-chan pending.Reply[[]byte] {
	g := s.g
	b, _ := encodeCall(methodSessionLimits, nil)
	id := g.newOwnID()
	ch, _ := g.req.calls.Add(id)
	topic := topicSelfRPCRequestPrefix + strconv.Itoa(int(id))
	select { // drop a stale echo of an earlier connection
	case <-s.echoed:
	default:
	}
	s.echoTopic.Store(&topic)
	g.echo.add(topic, b)
	g.out.ownBucket.Charge(ratelimit.MessageCost(1))
	l.publish(topic, g.opts.qos, b)
	return ch
}

// sawEcho is told by the router of every echo it drops: the echo of the
// limits request says the server is a plain broker.
func (s *session) sawEcho(topic string) {
	if p := s.echoTopic.Load(); p != nil && *p == topic {
		select {
		case s.echoed <- struct{}{}:
		default:
		}
	}
}

func (s *session) applyLimits(r pending.Reply[[]byte]) {
	g := s.g
	if r.Err != nil {
		return
	}
	l, err := decodeSessionLimits(r.Value)
	if err != nil {
		g.log.Warn("tbgateway: unreadable session limits", "err", err)
		return
	}
	s.silent, s.limitsKnown = false, true
	g.out.applyLimits(l)
}

// watch waits for the end of the link: paho's report, a half-open link
// seen by the read watchdog, a missing SUBACK, or Close. A late limits
// answer is applied meanwhile.
func (s *session) watch(l link, st started) error {
	g := s.g
	subTimeout := time.NewTimer(g.opts.connectTimeout)
	defer subTimeout.Stop()
	ka := g.opts.keepAlive
	// paho pings after a keep-alive without traffic and gives up a
	// quarter later; a link that stays silent longer than that (a
	// blackhole behind a full socket buffer stalls paho's pinger too) is
	// cut here, checked every eighth so that it ends within 1.5 × ka.
	tick := time.NewTicker(ka / 8)
	defer tick.Stop()
	for {
		select {
		case err := <-l.lost():
			if err != nil && strings.Contains(err.Error(), "pingresp not received") {
				g.stats.halfOpen.Add(1) // paho's own keep-alive noticed first
			}
			return err
		case <-g.life.done:
			return nil
		case r := <-st.limits:
			s.applyLimits(r)
			st.limits = nil
		case <-st.subDone:
			s.subscribed(st.sub)
			st.subDone = nil
		case <-subTimeoutC(st.subDone, subTimeout):
			l.kill()
			return errors.New("tbgateway: no SUBACK within the connect timeout")
		case <-tick.C:
			if l.idle() >= ka*11/8 {
				// Reported at once; paho's end of the link is awaited
				// before the next dial.
				g.stats.halfOpen.Add(1)
				l.kill()
				return errHalfOpen
			}
		}
	}
}

// DefaultLimitsWait bounds how long a new connection waits for the
// getSessionLimits answer before data flows under the configured limits.
const DefaultLimitsWait = 5 * time.Second

// subTimeoutC is the SUBACK timer's channel while the SUBACK is awaited.
func subTimeoutC(subDone <-chan struct{}, t *time.Timer) <-chan time.Time {
	if subDone == nil {
		return nil
	}
	return t.C
}
