package tbgateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thingsgate/tbgateway/internal/outbox"
	"github.com/thingsgate/tbgateway/internal/ratelimit"
)

// sender is the outbound path: every message is queued, packed by the
// sender's goroutine, paced under the rate limits and tracked until its
// PUBACK. It sends only on the connection the session attached, and on
// each new connection it announces every registered device before that
// device's first data, as the data comes, instead of all devices before
// any data.
type sender struct {
	g          *Gateway
	queue      *outbox.Queue
	durable    *store            // nil without WithQueueStore
	gwBucket   *ratelimit.Bucket // sub-device traffic (v1/gateway/*), shared
	ownBucket  *ratelimit.Bucket // the gateway's own traffic (v1/devices/me/*)
	maxPayload atomic.Int64      // the server's limit, as last reported
	window     atomic.Int64      // in-flight window, as last reported
	wakeCh     chan struct{}     // an ack, a drained callback lane, new limits
	stopped    chan struct{}
	qos0       chan *outbox.Message

	flushing atomic.Int32  // callers in flush
	progress chan struct{} // one-slot: an ack or a detach, for flush

	mu  sync.Mutex // guards cur, and orders taking from the queue with detach
	cur *conn

	suspect  atomic.Pointer[outbox.Record] // poison: head of the oldest message at the last loss
	drops    int                           // consecutive losses with the same suspect (session goroutine)
	lastDrop time.Time                     // when the last loss was counted (session goroutine)
	dataAcks atomic.Int64                  // data messages acknowledged on the attached connection

	poisonMu sync.Mutex
	poisoned []PoisonMessage
}

// conn is the sender's view of one attached connection. Everything after
// gone is the sender goroutine's alone.
type conn struct {
	l    link
	gone chan struct{} // closed on detach

	pending   map[string]string // registered devices not yet announced here, with their profiles
	backlog   []string          // the same names, announced in idle moments
	announced map[string]bool   // devices with a connect (explicit, re-announced or implicit) here
	turn      bool              // alternate backlog announcements with data
}

func newSender(g *Gateway) *sender {
	o := &g.opts
	s := &sender{
		g:         g,
		gwBucket:  ratelimit.NewBucket(o.gatewayLimits, o.rateMargin),
		ownBucket: ratelimit.NewBucket(o.ownLimits, o.rateMargin),
		wakeCh:    make(chan struct{}, 1),
		progress:  make(chan struct{}, 1),
		stopped:   make(chan struct{}),
	}
	s.queue = outbox.NewQueue(o.queueMsgs, o.queueBytes, o.overflow, s.onDrop)
	s.maxPayload.Store(int64(o.maxPayloadSize))
	s.window.Store(int64(o.maxInflight))
	if o.qos == 0 {
		s.qos0 = make(chan *outbox.Message, o.maxInflight)
	}
	return s
}

func (s *sender) wake() {
	select {
	case s.wakeCh <- struct{}{}:
	default:
	}
}

// attach releases the sender on l. Every device the registry holds is
// announced on it before its data.
func (s *sender) attach(l link) {
	c := &conn{l: l, gone: make(chan struct{}), announced: map[string]bool{}}
	c.pending = s.g.reg.snapshot()
	c.backlog = make([]string, 0, len(c.pending))
	for name := range c.pending {
		c.backlog = append(c.backlog, name)
	}
	s.dataAcks.Store(0)
	s.mu.Lock()
	s.cur = c
	s.mu.Unlock()
	s.wake()
}

// detach stops the sender on l and returns what l never acknowledged,
// oldest first. The lock orders it with taking records from the queue, so
// that the messages come back in the order they were sent.
func (s *sender) detach(l link) []*outbox.Message {
	s.mu.Lock()
	if c := s.cur; c != nil && c.l == l {
		s.cur = nil
		close(c.gone)
	}
	back := l.tracker().TakeBack()
	s.mu.Unlock()
	s.notifyProgress()
	return back
}

// attached returns the attached connection, or nil.
func (s *sender) attached() *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// inFlight is the number of messages awaiting their PUBACK.
func (s *sender) inFlight() int {
	if c := s.attached(); c != nil {
		return c.l.tracker().Count()
	}
	return 0
}

// takeBack puts the records of messages the connection never
// acknowledged back at the head of the queue, in order, so that they go
// out again on the next connection behind their devices' announcements;
// the gateway's own re-announcements are dropped (the next connection
// makes its own). The oldest of them may be poison.
func (s *sender) takeBack(back []*outbox.Message, closing bool) {
	var first *outbox.Message
	for _, m := range back {
		if !m.Records[0].Announce {
			first = m
			break
		}
	}
	var poison *outbox.Message
	if !closing {
		poison = s.checkPoison(first)
	}
	var recs []*outbox.Record
	for _, m := range back {
		if m == poison || m.Records[0].Announce {
			continue
		}
		recs = append(recs, m.Records...)
		s.g.stats.resent.Add(1)
	}
	if len(recs) == 0 {
		return
	}
	if err := s.queue.Put(context.Background(), recs, true); err != nil {
		// Closed already (Close's context ended first): say so to
		// whoever waits; a durable store keeps them.
		for _, r := range recs {
			if r.Waiter != nil {
				s.g.fail(r.Waiter, ErrClosed)
			}
		}
	}
}

// flush waits, while the connection is up, until nothing is queued or in
// flight, or ctx ends.
func (s *sender) flush(ctx context.Context) {
	s.flushing.Add(1)
	defer s.flushing.Add(-1)
	for {
		state, changed := s.g.sess.current()
		if state != linkUp {
			return
		}
		if n, _ := s.queue.Len(); n == 0 && s.inFlight() == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.progress:
		case <-changed:
		}
	}
}

func (s *sender) notifyProgress() {
	if s.flushing.Load() > 0 {
		select {
		case s.progress <- struct{}{}:
		default:
		}
	}
}

// publish sends one whole message through the queue and waits for its
// acknowledgement; see send.
func (s *sender) publish(ctx context.Context, r *outbox.Record) error {
	recs, err := s.whole(r)
	if err != nil {
		return err
	}
	return s.send(ctx, recs)
}

// whole makes r, a whole message, the one record of a call, if it fits
// in a message.
func (s *sender) whole(r *outbox.Record) ([]*outbox.Record, error) {
	if n, max := outbox.Overhead(r.Topic, s.g.opts.qos)+len(r.Body), s.limit().max; n > max {
		return nil, &PayloadTooLargeError{Topic: r.Topic, Size: n, Limit: max}
	}
	return r.Alone(), nil
}

// send is the one outbound path: it queues the records of one call and
// waits until the server acknowledged all of them (QoS 1; written, at QoS 0)
// or ctx ends. A ctx without deadline gets the request timeout. If it ends
// first, the data stays queued and the error wraps ErrEnqueued.
func (s *sender) send(ctx context.Context, recs []*outbox.Record) error {
	w := outbox.Bind(recs, nil)
	if err := s.put(ctx, recs); err != nil {
		return err
	}
	ctx, cancel := s.g.requestContext(ctx)
	defer cancel()
	select {
	case <-w.Done():
		return w.Err()
	case <-ctx.Done():
		return fmt.Errorf("%w: not yet acknowledged: %w", ErrEnqueued, ctx.Err())
	case <-s.g.life.done:
		// Close fails what it cannot send; its outcome comes soon.
		<-w.Done()
		return w.Err()
	}
}

// enqueue queues the records of one call without waiting for the
// acknowledgement; done, if set, gets the outcome on the callback lane.
// While that lane is far behind, the call waits (or fails, under
// FailFast) as if the queue were full.
func (s *sender) enqueue(ctx context.Context, recs []*outbox.Record, done func(error)) error {
	if done == nil {
		done = func(error) {}
	} else if err := s.g.waitCallbacks(ctx); err != nil {
		return err
	}
	outbox.Bind(recs, done)
	return s.put(ctx, recs)
}

// put accepts the records of one call, bound to its waiter, into the queue
// (and the durable store), applying the overflow policy.
func (s *sender) put(ctx context.Context, recs []*outbox.Record) error {
	if s.g.closed() {
		return ErrClosed
	}
	if age := s.g.opts.maxAge; age > 0 {
		now := time.Now().UnixNano()
		for _, r := range recs {
			r.At = now
		}
	}
	if s.durable != nil {
		if err := s.durable.append(recs); err != nil {
			return fmt.Errorf("tbgateway: queue store: %w", err)
		}
	}
	err := s.queue.Put(ctx, recs, false)
	if err != nil && s.durable != nil {
		s.durable.remove(recs)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, outbox.ErrFull):
		s.g.stats.refused.Add(1)
		return ErrQueueFull
	case errors.Is(err, outbox.ErrTooBig):
		return fmt.Errorf("%w: the call alone exceeds the queue bounds", ErrQueueFull)
	case errors.Is(err, outbox.ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("tbgateway: waiting for room in the queue: %w", err)
}

// expire drops the queued records older than WithMaxAge.
func (s *sender) expire() {
	if age := s.g.opts.maxAge; age > 0 {
		s.queue.DropExpired(time.Now().Add(-age).UnixNano(), s.onExpire)
	}
}

// onExpire is told of a record dropped for its age.
func (s *sender) onExpire(r *outbox.Record) { s.discard(r, &s.g.stats.expired, ErrExpired) }

// onDrop is told of records evicted by the OverflowDropOldest policy.
func (s *sender) onDrop(r *outbox.Record) { s.discard(r, &s.g.stats.droppedOverflow, ErrDropped) }

// discard forgets a queued record that will not be sent: counted, out of
// the store, and its call failed with why.
func (s *sender) discard(r *outbox.Record, counter *atomic.Uint64, why error) {
	counter.Add(1)
	if s.durable != nil {
		s.durable.remove([]*outbox.Record{r})
	}
	if r.Waiter != nil {
		s.g.fail(r.Waiter, why)
	}
}

// limit is what one message may carry: the server's maximum payload size
// and, under a data-point rate limit, the most data points one message can
// ever be admitted with.
func (s *sender) limit() sizeLimit {
	return sizeLimit{max: int(s.maxPayload.Load()), qos: s.g.opts.qos, maxPoints: s.gwBucket.MaxDataPoints()}
}

func (s *sender) applyLimits(l SessionLimits) {
	g, o := s.g, &s.g.opts
	if l.MaxPayloadSize > 0 {
		s.maxPayload.Store(int64(min(l.MaxPayloadSize, o.maxPayloadSize)))
	}
	if l.MaxInflightMessages > 0 {
		s.window.Store(int64(min(l.MaxInflightMessages, o.maxInflight)))
	}
	if gw, err := l.GatewayRateLimits.parse(); err == nil {
		s.gwBucket.SetLimits(gw)
	} else {
		g.log.Warn("tbgateway: unreadable gateway rate limits", "err", err)
	}
	if own, err := l.RateLimits.parse(); err == nil {
		s.ownBucket.SetLimits(own)
	} else {
		g.log.Warn("tbgateway: unreadable rate limits", "err", err)
	}
	g.stats.limitsApplied.Add(1)
	g.log.Info("tbgateway: session limits applied", "max_payload_size", s.maxPayload.Load(),
		"max_inflight", s.window.Load(), "gateway_rate_limits", l.GatewayRateLimits, "rate_limits", l.RateLimits)
	s.wake()
}

// loop is the sender goroutine: while a connection is attached and its
// in-flight window has room, it announces what must be announced, packs
// the head of the queue into one message and hands it to the connection.
func (s *sender) loop() {
	defer close(s.stopped)
	g := s.g
	var lingerHead *outbox.Record
	var lingerUntil time.Time
	var packer outbox.Packer
	for {
		c := s.attached()
		if c == nil {
			_, changed := g.sess.current()
			if c = s.attached(); c == nil {
				select {
				case <-changed:
				case <-s.wakeCh:
				case <-g.life.done:
					return
				}
				continue
			}
		}
		if c.l.tracker().Count() >= int(s.window.Load()) || g.callbacksBehind() {
			select {
			case <-s.wakeCh:
			case <-c.gone:
			case <-g.life.done:
				return
			}
			continue
		}
		s.expire()
		recs, changed := s.queue.Peek(4096)
		if len(recs) == 0 {
			if s.announceBacklog(c) {
				continue
			}
			select {
			case <-changed:
			case <-c.gone:
			case <-g.life.done:
				return
			}
			continue
		}
		lim := s.limit()
		packer.MaxDevices = s.gwBucket.MaxCost(ratelimit.KindTelemetryMessages)
		if len(c.pending) > 0 {
			// While devices wait for their announcement, a message takes
			// at most half a window of devices: the first data then
			// follows its connects at once instead of after every device
			// of a large message is announced, and connects still fill
			// most of the window.
			room := max(1, int(s.window.Load())/2)
			if packer.MaxDevices == 0 || room < packer.MaxDevices {
				packer.MaxDevices = room
			}
		}
		n := packer.Plan(recs, lim.max, lim.maxPoints, g.opts.qos, g.opts.coalesce)
		// Linger: give other calls a moment to add to a message that is
		// not full yet, then look again from the top.
		if g.opts.linger > 0 && recs[0].Kind != outbox.Raw && n == len(recs) {
			if lingerHead != recs[0] {
				lingerHead, lingerUntil = recs[0], time.Now().Add(g.opts.linger)
			}
			if wait := time.Until(lingerUntil); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-changed:
				case <-t.C:
				case <-c.gone:
				case <-g.life.done:
					t.Stop()
					return
				}
				t.Stop()
				continue
			}
		}
		// Ack-clocked batching: a message that took all that is queued
		// and is not full waits while enough is in flight anyway, so
		// that data trickling in (slow publishers, a durable queue)
		// still goes out in large messages; the next ack or new data
		// looks again. Latency does not suffer: the acks come first.
		if n == len(recs) && recs[0].Kind != outbox.Raw && c.l.tracker().Count() >= max(2, int(s.window.Load())/8) {
			// Only an ack looks again: planning anew for every record
			// that arrives would cost more than the batching saves.
			select {
			case <-s.wakeCh:
			case <-c.gone:
			case <-g.life.done:
				return
			}
			continue
		}
		// A device's connect leaves before its data on every connection.
		if s.announceFor(c, recs[:n]) {
			continue
		}
		if len(c.backlog) > 0 {
			if c.turn = !c.turn; c.turn && s.announceBacklog(c) {
				continue
			}
		}
		msg := packer.Build()
		if size := msg.Size(g.opts.qos); size > lim.max {
			// Queued before the server lowered its limit.
			if s.queue.Take(recs[:n]) {
				g.failRecords(&msg, &PayloadTooLargeError{Topic: msg.Topic, Size: size, Limit: lim.max})
			}
			continue
		}
		if err := s.pace(&msg); err != nil {
			if g.closed() {
				return // the records are still queued
			}
			if s.queue.Take(recs[:n]) {
				g.failRecords(&msg, err)
			}
			continue
		}
		// The records stay queued until now: if the connection dropped
		// while this waited (lingering, pacing), what it never
		// acknowledged is back in front and goes first.
		if !s.takeAndExpect(c, recs[:n], &msg) {
			continue
		}
		s.transmit(c, &msg)
	}
}

// takeAndExpect takes the message's records from the queue and registers
// it with the connection's tracker, both under the lock detach takes: a
// message is either taken back with the connection or not sent on it.
func (s *sender) takeAndExpect(c *conn, recs []*outbox.Record, m *outbox.Message) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != c || !s.queue.Take(recs) {
		return false
	}
	if s.g.opts.qos == 1 && !c.l.tracker().Expect(m) {
		_ = s.queue.Put(context.Background(), m.Records, true)
		return false
	}
	return true
}

// announceFor announces, ahead of recs, each device of theirs that is
// registered but not yet announced on this connection, and pays the
// server's cost of the implicit connect of each other device new on it.
// It reports whether it sent anything (the caller looks again: the window
// may be full now).
func (s *sender) announceFor(c *conn, recs []*outbox.Record) bool {
	limited := s.gwBucket.Limited()
	if len(c.pending) == 0 && !limited {
		return false
	}
	sent := false
	last := ""
	for _, r := range recs {
		name := r.DeviceName
		if name == "" || name == last || (r.Kind == outbox.Raw && (r.Topic == topicGatewayConnect || r.Topic == topicGatewayDisconnect)) {
			continue
		}
		last = name
		if c.announced[name] {
			continue
		}
		if _, ok := c.pending[name]; ok {
			if c.l.tracker().Count() >= int(s.window.Load()) {
				return true
			}
			if !s.announce(c, name) {
				return true
			}
			sent = true
			continue
		}
		if limited {
			// Its first data connects it implicitly: two messages of
			// the gateway's bucket before the data's own cost.
			if err := s.gwBucket.Wait(s.g.life.ctx, ratelimit.MessageCost(2)); err != nil {
				return true
			}
		}
		c.announced[name] = true
	}
	return sent
}

// announceBacklog announces one registered device that has no data
// waiting, so that every device gets its downlinks again soon after a
// reconnect. It reports whether it sent one.
func (s *sender) announceBacklog(c *conn) bool {
	for len(c.backlog) > 0 {
		name := c.backlog[len(c.backlog)-1]
		c.backlog = c.backlog[:len(c.backlog)-1]
		if _, ok := c.pending[name]; ok {
			return s.announce(c, name)
		}
	}
	return false
}

// announce sends v1/gateway/connect for a registered device on c, paced
// like any connect. It reports false if c went away meanwhile.
func (s *sender) announce(c *conn, name string) bool {
	profile := c.pending[name]
	delete(c.pending, name)
	c.announced[name] = true
	body := encodeConnect(name, profile)
	r := &outbox.Record{Topic: topicGatewayConnect, Body: body, DeviceName: name, Note: profile, Announce: true}
	m := outbox.Message{Topic: topicGatewayConnect, Payload: body, Records: r.Alone()}
	if err := s.pace(&m); err != nil {
		return false
	}
	s.mu.Lock()
	ok := s.cur == c && (s.g.opts.qos == 0 || c.l.tracker().Expect(&m))
	s.mu.Unlock()
	if ok {
		s.transmit(c, &m)
	}
	return ok
}

// pace waits until ThingsBoard's rate limits admit m: telemetry and
// attribute posts count one telemetry message and their data points,
// everything else one message; a connect also pays for the device's
// lookup and session on the server.
func (s *sender) pace(m *outbox.Message) error {
	bucket := s.gwBucket
	if strings.HasPrefix(m.Topic, "v1/devices/me/") {
		bucket = s.ownBucket
	}
	var cost ratelimit.Cost
	switch {
	case m.Topic == topicGatewayTelemetry || m.Topic == topicGatewayAttributes:
		// The server posts each device's part on its own.
		cost = ratelimit.Cost{TelemetryMessages: max(m.Devices, 1), DataPoints: m.Points}
	case m.Topic == topicSelfTelemetry || m.Topic == topicSelfAttributes:
		cost = ratelimit.TelemetryCost(m.Points)
	case m.Topic == topicGatewayConnect:
		cost = ratelimit.MessageCost(3)
	default:
		cost = ratelimit.MessageCost(1)
	}
	err := bucket.Wait(s.g.life.ctx, cost)
	if errors.Is(err, ratelimit.ErrCostExceedsBurst) {
		return fmt.Errorf("%w: %v", ErrRateLimit, err)
	}
	return err
}

// transmit hands one message to the connection.
func (s *sender) transmit(c *conn, m *outbox.Message) {
	g := s.g
	m.SentAt = time.Now()
	g.stats.published.Add(1)
	if g.log.Enabled(context.Background(), slog.LevelDebug) {
		g.log.Debug("tbgateway: publish", "topic", m.Topic, "payload", string(m.Payload))
	}
	if r := m.Records[0]; r.Kind == outbox.Raw {
		switch r.Topic {
		case topicGatewayConnect:
			delete(c.pending, r.DeviceName)
			c.announced[r.DeviceName] = true
		case topicGatewayDisconnect:
			delete(c.pending, r.DeviceName)
			delete(c.announced, r.DeviceName)
		}
	}
	if strings.HasPrefix(m.Topic, "v1/devices/me/") {
		g.echo.add(m.Topic, m.Payload)
	}
	if g.opts.qos == 0 {
		m.Token = c.l.publish(m.Topic, 0, m.Payload)
		select {
		case s.qos0 <- m:
		case <-g.life.done:
		}
		return
	}
	c.l.send(m)
}

// qos0Loop completes QoS 0 messages once written, in order.
func (s *sender) qos0Loop() {
	g := s.g
	for {
		select {
		case m := <-s.qos0:
			select {
			case <-m.Token.Done():
			case <-g.life.done:
				return
			}
			if err := m.Token.Error(); err != nil {
				g.stats.publishErrors.Add(1)
				g.failRecords(m, fmt.Errorf("tbgateway: publish %s: %w", m.Topic, err))
				continue
			}
			s.onAck(m)
		case <-g.life.done:
			return
		}
	}
}

// onAck runs when the server acknowledged m (on paho's network goroutine).
func (s *sender) onAck(m *outbox.Message) {
	g := s.g
	g.stats.acked.Add(1)
	g.stats.points.Add(uint64(m.Points))
	if !m.SentAt.IsZero() {
		g.stats.ackLatency.observe(time.Since(m.SentAt))
	}
	if r := m.Records[0]; r.Kind != outbox.Raw || !r.Announce && r.Topic != topicGatewayConnect {
		s.dataAcks.Add(1)
	}
	if p := s.suspect.Load(); p != nil && p == m.Records[0] {
		s.suspect.CompareAndSwap(p, nil)
	}
	if s.durable != nil {
		s.durable.remove(m.Records)
	}
	// Two passes. By now the records have long left the CPU's caches, and
	// an atomic update stalls on its miss before the next can start, while
	// plain reads of many records overlap: the first pass reads, and the
	// second updates what the first brought in.
	var waiters []*outbox.Waiter
	for _, r := range m.Records {
		// The registry first: a Connect returns as soon as its waiter is
		// acknowledged, and must find the device registered.
		g.recordAcked(r)
		if w := r.Waiter; w != nil && !w.Decided() {
			if waiters == nil {
				waiters = make([]*outbox.Waiter, 0, len(m.Records))
			}
			waiters = append(waiters, w)
		}
	}
	decided := waiters[:0]
	for _, w := range waiters {
		if w.Ack() && w.Callback() != nil {
			decided = append(decided, w)
		}
	}
	if len(decided) > 0 {
		// One job for the callbacks of the whole message.
		g.runCallbacks(len(decided), func() {
			for _, w := range decided {
				w.Callback()(nil)
			}
		})
	}
	s.wake()
	s.notifyProgress()
}
