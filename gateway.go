// Package tbgateway is a client for the ThingsBoard MQTT Gateway API: one
// MQTT connection, authenticated as a ThingsBoard gateway device, that
// carries telemetry, attributes, RPC and claims for the many devices behind
// it, plus the gateway's own device API (v1/devices/me/*).
//
// Dial opens the connection; Connect announces a device behind the gateway
// and returns a *Device handle; the Publish, Request and Claim calls build
// the v1/gateway/* payloads exactly as the ThingsBoard server parses them.
// Every call that waits takes a context. Handlers for RPC and shared
// attribute updates run on the gateway's own goroutines, never on the MQTT
// network goroutine, so a slow or panicking handler cannot stall the
// connection.
package tbgateway

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingsgate/tbgateway/internal/dispatch"
	"github.com/thingsgate/tbgateway/internal/outbox"
	"github.com/thingsgate/tbgateway/internal/pending"
	"github.com/thingsgate/tbgateway/internal/ratelimit"
)

// Topics of the gateway's own device API.
const (
	topicSelfTelemetry          = "v1/devices/me/telemetry"
	topicSelfAttributes         = "v1/devices/me/attributes"
	topicSelfAttrRequestPrefix  = "v1/devices/me/attributes/request/"
	topicSelfAttrResponsePrefix = "v1/devices/me/attributes/response/"
	topicSelfRPCRequestPrefix   = "v1/devices/me/rpc/request/"
	topicSelfRPCResponsePrefix  = "v1/devices/me/rpc/response/"
	topicSelfClaim              = "v1/devices/me/claim"
)

// subscriptions are the filters ThingsBoard accepts. Downlinks arrive
// without them too (the server pushes to gateway topics regardless), but a
// subscription sets their QoS.
var subscriptions = []string{
	topicGatewayAttributes,
	topicGatewayRPC,
	topicGatewayAttrResponse,
	topicSelfAttributes,
	topicSelfAttrResponsePrefix + "+",
	topicSelfRPCRequestPrefix + "+",
	topicSelfRPCResponsePrefix + "+",
}

// Gateway is one MQTT session with ThingsBoard as a gateway device. It is
// safe for concurrent use. Create it with Dial and end it with Close.
type Gateway struct {
	opts   options
	log    *slog.Logger
	client mqtt.Client

	ctx    context.Context // given to handlers; cancelled by Close
	cancel context.CancelFunc
	done   chan struct{} // closed by Close
	once   sync.Once

	updates   *dispatch.Lane // attribute-update handlers, in order
	rpcs      *dispatch.Lane // RPC handlers
	callbacks *dispatch.Lane // async publish callbacks and connection events

	// The outbound path: every message is queued, packed by the sender
	// goroutine and tracked until its PUBACK.
	queue      *outbox.Queue
	tracker    *outbox.Tracker
	durable    *outbox.BoltStore // nil without WithDurableQueue
	acked      chan struct{}     // a PUBACK freed room in the in-flight window
	gwBucket   *ratelimit.Bucket // sub-device traffic (v1/gateway/*), shared
	ownBucket  *ratelimit.Bucket // the gateway's own traffic (v1/devices/me/*)
	maxPayload atomic.Int64      // the server's limit, as last reported
	window     atomic.Int64      // in-flight window, as last reported
	senderDone chan struct{}
	qos0       chan *outbox.Message

	state     sync.Mutex
	ready     chan struct{} // closed while connected, subscribed and announced
	firstUp   chan struct{} // closed when the first session is ready
	upOnce    sync.Once
	connects  int
	upSince   time.Time
	connState ConnectionState
	connAcks  atomic.Int64 // acknowledgements on the current connection

	mu      sync.RWMutex
	devices map[string]*deviceEntry // connected devices
	attrH   attrHandlers
	rpcH    rpcHandlers
	running map[rpcKey]struct{} // RPCs whose handler has not answered yet
	renamed map[string]string   // old name -> new name, from the server

	hasRenames atomic.Bool

	nextID    atomic.Int32 // gateway attribute requests
	nextOwnID atomic.Int32 // the gateway's own attribute requests and calls
	attrReqs  pending.Table[attrKey, attrReply]
	selfAttrs pending.Table[int32, []byte]
	calls     pending.Table[int32, []byte]

	poisonMu sync.Mutex // guards the poison bookkeeping of messages in flight
	poisoned []PoisonMessage
	echo     echoFilter
	stats    counters
	self     GatewayDevice
}

// Dial opens the MQTT connection to broker (tcp://, mqtt://, ssl://,
// tls://, mqtts://, ws:// or wss:// URL) and returns once ThingsBoard has
// accepted the gateway and its downlink subscriptions are in place. It
// blocks until then, the connect timeout, or ctx ends. A refused CONNECT is
// a *ConnectError. After a later connection loss the gateway reconnects by
// itself and announces its connected devices again.
func Dial(ctx context.Context, broker string, opts ...Option) (*Gateway, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	u, err := url.Parse(broker)
	if err != nil || u.Host == "" {
		return nil, invalid("broker URL %q", broker)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "tcps", "ws", "wss":
	default:
		return nil, invalid("broker URL scheme %q", u.Scheme)
	}
	if o.clientID == "" {
		o.clientID = randomClientID()
	}
	g := &Gateway{
		opts:       o,
		log:        o.logger,
		done:       make(chan struct{}),
		ready:      make(chan struct{}),
		firstUp:    make(chan struct{}),
		devices:    make(map[string]*deviceEntry),
		running:    make(map[rpcKey]struct{}),
		acked:      make(chan struct{}, 1),
		senderDone: make(chan struct{}),
	}
	g.self.g = g
	g.ctx, g.cancel = context.WithCancel(context.Background())
	onPanic := func(v any, stack []byte) {
		g.stats.panics.Add(1)
		g.log.Error("tbgateway: handler panicked", "panic", v, "stack", string(stack))
	}
	g.updates = dispatch.NewLane(1, o.handlerQueue, onPanic)
	g.rpcs = dispatch.NewLane(o.rpcWorkers, o.handlerQueue, onPanic)
	g.callbacks = dispatch.NewLane(1, 1<<16, onPanic)
	g.queue = outbox.NewQueue(o.queueMsgs, o.queueBytes, o.overflow, g.onDrop)
	g.maxPayload.Store(int64(o.maxPayloadSize))
	g.window.Store(int64(o.maxInflight))
	g.gwBucket = ratelimit.NewBucket(o.gatewayLimits, o.rateMargin)
	g.ownBucket = ratelimit.NewBucket(o.ownLimits, o.rateMargin)
	g.tracker = outbox.NewTracker(g.onAck)
	if o.qos == 0 {
		g.qos0 = make(chan *outbox.Message, o.maxInflight)
	}
	if o.durablePath != "" {
		st, recs, err := outbox.OpenBolt(o.durablePath)
		if err != nil {
			return nil, fmt.Errorf("tbgateway: durable queue: %w", err)
		}
		g.durable = st
		if len(recs) > 0 {
			// Data accepted before a restart goes first.
			if err := g.queue.Put(ctx, recs, true); err != nil {
				_ = st.Close()
				return nil, fmt.Errorf("tbgateway: durable queue: %w", err)
			}
			g.stats.restored.Add(uint64(len(recs)))
			g.log.Info("tbgateway: restored queued messages from disk", "records", len(recs))
		}
	}

	po := mqtt.NewClientOptions().
		AddBroker(broker).
		SetClientID(o.clientID).
		SetUsername(o.username).
		SetPassword(o.password).
		SetKeepAlive(o.keepAlive).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(o.connectTimeout).
		SetWriteTimeout(o.connectTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(o.maxReconnectDelay).
		SetCleanSession(true).
		SetOrderMatters(true).
		// The tracker learns of every PUBACK. The in-flight window bounds
		// what paho re-sends after a reconnect; its own
		// SetMaxResumePubInFlight is left off because it races in paho 1.5.
		SetStore(g.tracker).
		SetDefaultPublishHandler(g.onMessage).
		SetOnConnectHandler(g.onConnect).
		SetConnectionLostHandler(g.onConnectionLost).
		SetReconnectingHandler(g.onReconnecting)
	if t := o.tls(); t != nil {
		po.SetTLSConfig(t)
	}
	for _, f := range o.paho {
		f(po)
	}
	g.client = mqtt.NewClient(po)

	fail := func(err error) (*Gateway, error) {
		g.client.Disconnect(0)
		g.shutdown()
		if g.durable != nil {
			_ = g.durable.Close()
		}
		return nil, err
	}
	tok := g.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fail(fmt.Errorf("tbgateway: dial %s: %w", safeURL(u), ctx.Err()))
	}
	if err := tok.Error(); err != nil {
		if ct, ok := tok.(*mqtt.ConnectToken); ok && ct.ReturnCode() >= 1 && ct.ReturnCode() <= 5 {
			return fail(&ConnectError{Code: ct.ReturnCode(), Err: err})
		}
		return fail(fmt.Errorf("tbgateway: dial %s: %w", safeURL(u), err))
	}
	select {
	case <-g.firstUp:
	case <-ctx.Done():
		return fail(fmt.Errorf("tbgateway: dial %s: %w", safeURL(u), ctx.Err()))
	}
	go g.sendLoop()
	if o.sessionRefresh > 0 {
		go g.refreshLoop()
	}
	if g.qos0 != nil {
		go g.qos0Loop()
	}
	g.log.Info("tbgateway: connected", "broker", safeURL(u), "client_id", o.clientID)
	return g, nil
}

// safeURL is the broker URL without user information: an access token may
// be given there, and it must never reach a log or an error.
func safeURL(u *url.URL) string {
	v := *u
	v.User = nil
	return v.String()
}

// Close ends the session. While connected it first waits, until ctx ends,
// for queued data to be sent and acknowledged; then handlers are told to
// stop through their contexts, pending requests fail with ErrClosed, and the
// MQTT connection is closed cleanly. Data still queued then fails with
// ErrClosed, or stays on disk with WithDurableQueue. It waits for running
// handlers until ctx ends. Every call made after Close returns ErrClosed.
// Close is idempotent.
func (g *Gateway) Close(ctx context.Context) error {
	first := false
	g.once.Do(func() { first = true })
	if !first {
		return nil
	}
	g.flush(ctx)
	close(g.done)
	<-g.senderDone
	g.client.Disconnect(250)
	g.shutdown()
	var err error
	for _, l := range []*dispatch.Lane{g.updates, g.rpcs, g.callbacks} {
		select {
		case <-l.Done():
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if g.durable != nil {
		if cerr := g.durable.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	g.log.Info("tbgateway: closed")
	return err
}

// flush waits while connected until nothing is queued or in flight.
func (g *Gateway) flush(ctx context.Context) {
	for g.Connected() {
		n, _ := g.queue.Len()
		if n == 0 && g.tracker.Count() == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (g *Gateway) shutdown() {
	g.cancel()
	g.updates.Close()
	g.rpcs.Close()
	g.failPending(ErrClosed)
	// Without a durable store, what is still queued or in flight is lost
	// with the process: say so to whoever waits.
	rest := g.queue.Close()
	if g.tracker != nil {
		for _, m := range g.tracker.InFlight() {
			rest = append(rest, m.Records...)
		}
	}
	for _, r := range rest {
		if r.Waiter != nil {
			g.fail(r.Waiter, ErrClosed)
		}
	}
	g.callbacks.Close()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (g *Gateway) closed() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// Connected reports whether the MQTT connection is up right now.
func (g *Gateway) Connected() bool { return !g.closed() && g.client.IsConnectionOpen() }

// ConnectionState is a state of the gateway's connection.
type ConnectionState int

// Connection states reported to WithConnectionListener.
const (
	// Up: connected, subscribed and every device announced again; queued
	// data flows.
	Up ConnectionState = iota + 1
	// Down: the connection was lost; data is queued meanwhile.
	Down
	// Reconnecting: an attempt to reconnect is starting.
	Reconnecting
)

// String returns the state's name.
func (s ConnectionState) String() string {
	switch s {
	case Up:
		return "up"
	case Down:
		return "down"
	case Reconnecting:
		return "reconnecting"
	}
	return "unknown"
}

// ConnectionEvent is a change of the connection's state.
type ConnectionEvent struct {
	State ConnectionState
	Err   error // why the connection went down
}

// event tells the application's listener, in order, off paho's goroutines.
func (g *Gateway) event(e ConnectionEvent) {
	if f := g.opts.onConnection; f != nil {
		g.callbacks.Submit(func() { f(e) })
	}
}

// onConnect runs the reconnect state machine on every (re)connect, in a
// goroutine of paho's: subscribe, announce every known device again
// (ThingsBoard forgot their sessions with the connection), and only then
// release the queued data, so that no device's data reaches the server
// before its connect. Messages that were in flight when the connection
// dropped are re-sent by paho first, with their packet ids; they were
// announced already.
func (g *Gateway) onConnect(c mqtt.Client) {
	if g.closed() {
		return
	}
	g.state.Lock()
	g.connects++
	n := g.connects
	g.upSince = time.Now()
	// paho may run this before the previous connection's lost handler:
	// hold the queue for this connection whatever that handler did yet.
	if isClosed(g.ready) {
		g.ready = make(chan struct{})
	}
	g.state.Unlock()
	resent := g.tracker.InFlight()
	g.poisonMu.Lock()
	for _, m := range resent {
		m.SentAt = time.Now() // paho re-sends them now
	}
	g.poisonMu.Unlock()
	g.connAcks.Store(0)
	if n > 1 {
		g.stats.reconnects.Add(1)
		g.stats.resent.Add(uint64(g.tracker.Count()))
		g.log.Info("tbgateway: reconnected", "connects", n, "in_flight", g.tracker.Count())
	}
	filters := make(map[string]byte, len(subscriptions))
	for _, f := range subscriptions {
		filters[f] = g.opts.qos
	}
	tok := c.SubscribeMultiple(filters, nil)
	if !tok.WaitTimeout(g.opts.connectTimeout) {
		g.log.Warn("tbgateway: subscribe timed out")
	} else if err := tok.Error(); err != nil {
		g.log.Warn("tbgateway: subscribe failed", "err", err)
	}
	if g.opts.sessionLimits {
		go g.askSessionLimits()
	}
	// Whatever happens below, a message that overtook older ones must be
	// sent again after them, before new data.
	settled := false
	defer func() {
		if !settled {
			g.resendOvertakers(resent)
		}
	}()
	if n > 1 && !g.reannounce(c) {
		return // the connection dropped again; the next onConnect starts over
	}
	if !g.awaitResent(c, resent) {
		return
	}
	g.resendOvertakers(resent)
	settled = true
	g.state.Lock()
	if g.connects == n && c.IsConnectionOpen() && !isClosed(g.ready) {
		close(g.ready)
	}
	g.state.Unlock()
	g.upOnce.Do(func() { close(g.firstUp) })
	g.setConnState(Up, nil)
}

// awaitResent waits until the messages paho re-sends after a reconnect are
// acknowledged before new data follows them, so that a device's data keeps
// its order. It reports false when the connection is gone.
func (g *Gateway) awaitResent(c mqtt.Client, resent []*outbox.Message) bool {
	deadline := time.Now().Add(g.opts.requestTimeout)
	for _, m := range resent {
		for g.tracker.Has(m) {
			if !c.IsConnectionOpen() || g.closed() {
				return false
			}
			if time.Now().After(deadline) {
				g.log.Warn("tbgateway: re-sent messages not acknowledged in time; sending on")
				return true
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return true
}

// resendOvertakers queues, ahead of everything, another copy of each
// message that overtook older ones, so that the last copy of every message
// reaches the server in order and a device's latest values end up right.
// The queue is still held: the copies go out after the older messages.
func (g *Gateway) resendOvertakers(resent []*outbox.Message) {
	var again []*outbox.Record
	for _, m := range g.tracker.Overtakers(resent) {
		for _, r := range m.Records {
			again = append(again, r.Clone()) // its caller already has the outcome
		}
		g.stats.resent.Add(1)
	}
	if len(again) > 0 {
		_ = g.queue.Put(context.Background(), again, true)
		g.log.Info("tbgateway: re-sending messages that overtook re-sent ones", "records", len(again))
	}
}

// reannounce sends v1/gateway/connect again for every connected device,
// a few at a time, each confirmed by its PUBACK and retried. It bypasses
// the queue, which stays held until it is done. It reports false when the
// connection is gone.
func (g *Gateway) reannounce(c mqtt.Client) bool {
	g.mu.RLock()
	devs := make(map[string]string, len(g.devices))
	for d, e := range g.devices {
		devs[d] = e.profile
	}
	g.mu.RUnlock()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for name, profile := range devs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			payload := encodeConnect(name, profile)
			for attempt := 0; attempt < 3; attempt++ {
				if !c.IsConnectionOpen() || g.closed() {
					failed.Add(1)
					return
				}
				tok := c.Publish(topicGatewayConnect, g.opts.qos, false, payload)
				if tok.WaitTimeout(g.opts.requestTimeout) && tok.Error() == nil {
					g.stats.announced.Add(1)
					return
				}
			}
			failed.Add(1)
			g.log.Warn("tbgateway: re-announcing device failed", "device", name)
		}()
	}
	wg.Wait()
	return c.IsConnectionOpen() && !g.closed()
}

// onReconnecting runs on paho's reconnect goroutine before every attempt,
// so before the new connection exists and paho re-sends what it kept: the
// queue is held here, or the sender could slip new data in ahead of those
// re-sent messages before onConnect (a goroutine of its own) holds it.
func (g *Gateway) onReconnecting(mqtt.Client, *mqtt.ClientOptions) {
	g.state.Lock()
	if isClosed(g.ready) {
		g.ready = make(chan struct{})
	}
	g.state.Unlock()
	g.setConnState(Reconnecting, nil)
}

func (g *Gateway) onConnectionLost(c mqtt.Client, err error) {
	g.log.Warn("tbgateway: connection lost", "err", err)
	g.state.Lock()
	// paho may already have reconnected (and the new connection be ready):
	// then this late report must not hold the queue again.
	if isClosed(g.ready) && !c.IsConnectionOpen() {
		g.ready = make(chan struct{})
	}
	upFor := time.Since(g.upSince)
	g.state.Unlock()
	g.failPending(ErrConnectionLost)
	g.checkPoison(upFor)
	g.setConnState(Down, err)
}

// setConnState reports state changes in a sensible order: paho calls its
// lost and reconnecting handlers on goroutines of their own, so a
// reconnect attempt can be seen before the loss.
func (g *Gateway) setConnState(s ConnectionState, err error) {
	g.state.Lock()
	defer g.state.Unlock()
	switch {
	case s == Down && g.connState != Up:
		return // already reported
	case s == Reconnecting && g.connState == Up:
		g.connState = Down
		g.event(ConnectionEvent{State: Down, Err: errors.New("connection lost")})
	}
	g.connState = s
	g.event(ConnectionEvent{State: s, Err: err})
}

func (g *Gateway) failPending(err error) {
	g.attrReqs.FailAll(err)
	g.selfAttrs.FailAll(err)
	g.calls.FailAll(err)
}

// PoisonMessage is a message set aside because the server dropped the
// connection every time it was sent.
type PoisonMessage struct {
	Topic   string
	Payload []byte
	Drops   int
}

// poisonWindow: a drop counts against the oldest message in flight only if
// it came this soon after the message was (re)sent, as when the server
// closes the connection on reading it.
const poisonWindow = 5 * time.Second

// checkPoison runs on every connection loss. The server processes a
// connection's messages in order and closes it on the first one it
// rejects, so the suspect is the oldest message in flight. When it was
// (re)sent shortly before each of several consecutive drops, with nothing
// acknowledged on those connections, its records are first retried alone;
// a record that still brings the connection down as many times more is set
// aside (paho will not send it again), its caller gets ErrPoisonMessage,
// and the rest of the queue carries on. A poison record therefore costs
// 2 × the threshold connections, and a flapping network has to fail that
// many times in a row, each time right after the resend, to be mistaken for
// one.
func (g *Gateway) checkPoison(upFor time.Duration) {
	if g.opts.poisonThreshold <= 0 {
		return
	}
	g.poisonMu.Lock() // paho may run two lost handlers, and onConnect, at once
	defer g.poisonMu.Unlock()
	inflight := g.tracker.InFlight()
	if len(inflight) == 0 {
		return
	}
	m := inflight[0]
	// A poison message is re-sent first after a reconnect and the server
	// closes the connection before acknowledging anything after it.
	if m.SentAt.IsZero() || time.Since(m.SentAt) > poisonWindow || upFor > poisonWindow || g.connAcks.Load() > 0 {
		m.Drops = 0
		return
	}
	m.Drops++
	if m.Drops < g.opts.poisonThreshold {
		return
	}
	if len(m.Records) > 1 || !m.Records[0].Isolate {
		// Coalescing may have packed innocent data with the culprit: take
		// back everything in flight, in order, and try the suspect's
		// records one by one ahead of the rest. Nothing is lost and no
		// device's data overtakes its earlier data.
		var recs []*outbox.Record
		for _, x := range inflight {
			g.tracker.Hold(x)
			if x == m {
				for _, r := range x.Records {
					r.Isolate = true
				}
			}
			recs = append(recs, x.Records...)
		}
		_ = g.queue.Put(context.Background(), recs, true)
		g.stats.isolated.Add(1)
		g.log.Warn("tbgateway: message rejected repeatedly; retrying its parts one by one", "topic", m.Topic, "records", len(m.Records))
		g.wake()
		return
	}
	g.tracker.Hold(m)
	g.stats.poisoned.Add(1)
	g.log.Error("tbgateway: message set aside: the server closed the connection each time it was sent",
		"topic", m.Topic, "bytes", len(m.Payload), "drops", m.Drops)
	g.mu.Lock()
	if len(g.poisoned) < 100 {
		g.poisoned = append(g.poisoned, PoisonMessage{Topic: m.Topic, Payload: m.Payload, Drops: m.Drops})
	}
	g.mu.Unlock()
	if g.durable != nil {
		g.durable.SetAside(m.Records)
	}
	for _, r := range m.Records {
		if r.Waiter != nil {
			g.fail(r.Waiter, fmt.Errorf("%w: %s message of %d bytes", ErrPoisonMessage, m.Topic, len(m.Payload)))
		}
	}
	g.wake()
}

// PoisonMessages returns the messages set aside since Dial (at most 100).
func (g *Gateway) PoisonMessages() []PoisonMessage {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return append([]PoisonMessage(nil), g.poisoned...)
}

// publish sends one whole message through the queue and waits for its
// acknowledgement; see send.
func (g *Gateway) publish(ctx context.Context, r *outbox.Record) error {
	if n, max := outbox.Overhead(r.Topic, g.opts.qos)+len(r.Body), g.limit().max; n > max {
		return &PayloadTooLargeError{Topic: r.Topic, Size: n, Limit: max}
	}
	return g.send(ctx, r.Alone())
}

// send is the one outbound path: it queues the records of one call and
// waits until the server acknowledged all of them (QoS 1; written, at QoS 0)
// or ctx ends. A ctx without deadline gets the request timeout. If it ends
// first, the data stays queued and the error wraps ErrEnqueued.
func (g *Gateway) send(ctx context.Context, recs []*outbox.Record) error {
	w := outbox.Bind(recs, nil)
	if err := g.put(ctx, recs); err != nil {
		return err
	}
	ctx, cancel := g.requestContext(ctx)
	defer cancel()
	select {
	case <-w.Done():
		return w.Err()
	case <-ctx.Done():
		return fmt.Errorf("%w: not yet acknowledged: %w", ErrEnqueued, ctx.Err())
	case <-g.done:
		select {
		case <-w.Done():
			return w.Err()
		case <-time.After(time.Second):
			return ErrClosed
		}
	}
}

// enqueue queues the records of one call without waiting for the
// acknowledgement; done, if set, gets the outcome on the callback lane.
func (g *Gateway) enqueue(ctx context.Context, recs []*outbox.Record, done func(error)) error {
	if done == nil {
		done = func(error) {}
	}
	outbox.Bind(recs, done)
	return g.put(ctx, recs)
}

// put accepts the records of one call, bound to its waiter, into the queue
// (and the durable store), applying the overflow policy.
func (g *Gateway) put(ctx context.Context, recs []*outbox.Record) error {
	if g.closed() {
		return ErrClosed
	}
	if g.durable != nil {
		if err := g.durable.Append(recs); err != nil {
			return fmt.Errorf("tbgateway: durable queue: %w", err)
		}
	}
	err := g.queue.Put(ctx, recs, false)
	if err != nil && g.durable != nil {
		g.durable.Remove(recs)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, outbox.ErrFull):
		g.stats.refused.Add(1)
		return ErrQueueFull
	case errors.Is(err, outbox.ErrTooBig):
		return fmt.Errorf("%w: the call alone exceeds the queue bounds", ErrQueueFull)
	case errors.Is(err, outbox.ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("tbgateway: waiting for room in the queue: %w", err)
}

// onDrop is told of records evicted by the DropOldest policy.
func (g *Gateway) onDrop(r *outbox.Record) {
	g.stats.droppedOverflow.Add(1)
	if g.durable != nil {
		g.durable.Remove([]*outbox.Record{r})
	}
	if r.Waiter != nil {
		g.fail(r.Waiter, ErrDropped)
	}
}

// limit is what one message may carry: the server's maximum payload size
// and, under a data-point rate limit, the most data points one message can
// ever be admitted with.
func (g *Gateway) limit() sizeLimit {
	return sizeLimit{max: int(g.maxPayload.Load()), qos: g.opts.qos, maxPoints: g.gwBucket.MaxDataPoints()}
}

// askSessionLimits calls getSessionLimits on every connect and applies the
// answer: the maximum payload size, the in-flight window and the rate
// limits. A plain broker never answers; the configured limits stay.
func (g *Gateway) askSessionLimits() {
	ctx, cancel := context.WithTimeout(g.ctx, g.opts.requestTimeout)
	defer cancel()
	l, err := g.self.sessionLimits(ctx, true)
	if err != nil {
		g.log.Debug("tbgateway: no session limits from the server", "err", err)
		return
	}
	g.applySessionLimits(l)
}

func (g *Gateway) applySessionLimits(l SessionLimits) {
	if l.MaxPayloadSize > 0 {
		g.maxPayload.Store(int64(min(l.MaxPayloadSize, g.opts.maxPayloadSize)))
	}
	if l.MaxInflightMessages > 0 {
		g.window.Store(int64(min(l.MaxInflightMessages, g.opts.maxInflight)))
	}
	if gw, err := l.GatewayRateLimits.parse(); err == nil {
		g.gwBucket.SetLimits(gw)
	} else {
		g.log.Warn("tbgateway: unreadable gateway rate limits", "err", err)
	}
	if own, err := l.RateLimits.parse(); err == nil {
		g.ownBucket.SetLimits(own)
	} else {
		g.log.Warn("tbgateway: unreadable rate limits", "err", err)
	}
	g.stats.limitsApplied.Add(1)
	g.log.Info("tbgateway: session limits applied", "max_payload_size", g.maxPayload.Load(),
		"max_inflight", g.window.Load(), "gateway_rate_limits", l.GatewayRateLimits, "rate_limits", l.RateLimits)
	g.wake()
}

func (g *Gateway) readyChan() <-chan struct{} {
	g.state.Lock()
	defer g.state.Unlock()
	return g.ready
}

func (g *Gateway) wake() {
	select {
	case g.acked <- struct{}{}:
	default:
	}
}

// sendLoop is the sender goroutine: while the connection is ready and the
// in-flight window has room, it packs the head of the queue into one
// message and hands it to paho.
func (g *Gateway) sendLoop() {
	defer close(g.senderDone)
	var lingerHead *outbox.Record
	var lingerUntil time.Time
	var packer outbox.Packer
	recheck := time.NewTimer(time.Hour)
	defer recheck.Stop()
	for {
		select {
		case <-g.readyChan():
		case <-g.done:
			return
		}
		if g.tracker.Count() >= int(g.window.Load()) {
			recheck.Reset(100 * time.Millisecond) // re-check readiness now and then
			select {
			case <-g.acked:
			case <-g.done:
				return
			case <-recheck.C:
			}
			continue
		}
		recs, changed := g.queue.Peek(4096)
		if len(recs) == 0 {
			select {
			case <-changed:
			case <-g.done:
				return
			}
			continue
		}
		lim := g.limit()
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
				case <-g.done:
					t.Stop()
					return
				}
				t.Stop()
				continue
			}
		}
		msg := packer.Build()
		if size := msg.Size(g.opts.qos); size > lim.max {
			// Queued before the server lowered its limit.
			if g.queue.Take(recs[:n]) {
				g.failRecords(&msg, &PayloadTooLargeError{Topic: msg.Topic, Size: size, Limit: lim.max})
			}
			continue
		}
		if err := g.pace(&msg); err != nil {
			if g.closed() {
				return // the records are still queued
			}
			if g.queue.Take(recs[:n]) {
				g.failRecords(&msg, err)
			}
			continue
		}
		// The records stay queued until now: if the connection dropped
		// while this waited (lingering, pacing), older data may have been
		// put in front, or the queue is held until what paho re-sends is
		// acknowledged. Sending this first would overtake that unseen.
		if !g.isReady() || !g.queue.Take(recs[:n]) {
			continue
		}
		g.transmit(&msg)
	}
}

// isReady reports whether the queue is released for the current
// connection.
func (g *Gateway) isReady() bool {
	g.state.Lock()
	defer g.state.Unlock()
	return isClosed(g.ready)
}

// pace waits until ThingsBoard's rate limits admit m: telemetry and
// attribute posts count one telemetry message and their data points,
// everything else one message; a connect also pays for the device's
// creation and session on the server.
func (g *Gateway) pace(m *outbox.Message) error {
	bucket := g.gwBucket
	if strings.HasPrefix(m.Topic, "v1/devices/me/") {
		bucket = g.ownBucket
	}
	var cost ratelimit.Cost
	switch {
	case m.Topic == topicGatewayTelemetry || m.Topic == topicGatewayAttributes ||
		m.Topic == topicSelfTelemetry || m.Topic == topicSelfAttributes:
		cost = ratelimit.TelemetryCost(m.Points)
	case m.Topic == topicGatewayConnect:
		cost = ratelimit.MessageCost(3)
	default:
		cost = ratelimit.MessageCost(1)
	}
	err := bucket.Wait(g.ctx, cost)
	if errors.Is(err, ratelimit.ErrCostExceedsBurst) {
		return fmt.Errorf("%w: %v", ErrRateLimit, err)
	}
	return err
}

// transmit hands one message to paho.
func (g *Gateway) transmit(m *outbox.Message) {
	m.SentAt = time.Now()
	g.stats.published.Add(1)
	if g.log.Enabled(context.Background(), slog.LevelDebug) {
		g.log.Debug("tbgateway: publish", "topic", m.Topic, "payload", string(m.Payload))
	}
	if strings.HasPrefix(m.Topic, "v1/devices/me/") {
		g.echo.add(m.Topic, m.Payload)
	}
	if g.opts.qos == 0 {
		tok := g.client.Publish(m.Topic, 0, false, m.Payload)
		m.Token = tok
		select {
		case g.qos0 <- m:
		case <-g.done:
		}
		return
	}
	g.tracker.Expect(m)
	tok := g.client.Publish(m.Topic, 1, false, m.Payload)
	select {
	case <-tok.Done():
		// Refused before paho stored it (not connected): queue it again.
		// An error after storing (a write timeout) is not a loss: paho
		// re-sends stored messages after reconnecting.
		if tok.Error() != nil && g.tracker.Unexpect(m) {
			g.stats.publishErrors.Add(1)
			_ = g.queue.Put(context.Background(), m.Records, true)
		}
	default:
	}
}

// fail fails a call; its callback, if any, runs off the caller's goroutine
// (which may be paho's, or hold the queue's lock).
func (g *Gateway) fail(w *outbox.Waiter, err error) {
	if w.Fail(err) {
		if cb := w.Callback(); cb != nil {
			g.runCallbacks(func() { cb(err) })
		}
	}
}

// runCallbacks runs callbacks of async publishes on the callback lane, in
// order; if the lane is full or closed, on a goroutine of their own, so that
// no outcome is lost.
func (g *Gateway) runCallbacks(job func()) {
	if !g.callbacks.Submit(job) {
		go job()
	}
}

// qos0Loop completes QoS 0 messages once written, in order.
func (g *Gateway) qos0Loop() {
	for {
		select {
		case m := <-g.qos0:
			select {
			case <-m.Token.Done():
			case <-g.done:
				return
			}
			if err := m.Token.Error(); err != nil {
				g.stats.publishErrors.Add(1)
				g.failRecords(m, fmt.Errorf("tbgateway: publish %s: %w", m.Topic, err))
				continue
			}
			g.onAck(m)
		case <-g.done:
			return
		}
	}
}

func (g *Gateway) failRecords(m *outbox.Message, err error) {
	for _, r := range m.Records {
		if r.Waiter != nil {
			g.fail(r.Waiter, err)
		}
	}
}

// onAck runs when the server acknowledged m (on paho's network goroutine).
func (g *Gateway) onAck(m *outbox.Message) {
	g.connAcks.Add(1)
	g.stats.acked.Add(1)
	g.stats.points.Add(uint64(m.Points))
	if g.durable != nil {
		g.durable.Remove(m.Records)
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
		g.runCallbacks(func() {
			for _, w := range decided {
				w.Callback()(nil)
			}
		})
	}
	g.wake()
}

// recordAcked keeps the device registry in step with acknowledged
// connects and disconnects, and notes each device's last uplink (for
// WithSessionRefresh).
func (g *Gateway) recordAcked(r *outbox.Record) {
	if r.Kind != outbox.Raw {
		// Telemetry and attributes: only Kind is read, in the cache line
		// the acknowledgement reads anyway.
		if g.opts.sessionRefresh > 0 {
			g.noteUplink(r.DeviceName)
		}
		return
	}
	switch r.Topic {
	case topicGatewayConnect:
		e := &deviceEntry{profile: r.Note}
		e.lastUplink.Store(time.Now().UnixNano())
		g.mu.Lock()
		g.devices[r.DeviceName] = e
		g.mu.Unlock()
		return
	case topicGatewayDisconnect:
		g.mu.Lock()
		delete(g.devices, r.DeviceName)
		g.mu.Unlock()
		return
	}
	if g.opts.sessionRefresh > 0 {
		g.noteUplink(r.DeviceName)
	}
}

// noteUplink records that data of device name reached the server.
func (g *Gateway) noteUplink(name string) {
	if name == "" {
		return
	}
	g.mu.RLock()
	e := g.devices[name]
	g.mu.RUnlock()
	if e != nil {
		e.lastUplink.Store(time.Now().UnixNano())
	}
}

// onMessage routes every received message; paho calls it on its network
// goroutine, so it only decodes and queues.
func (g *Gateway) onMessage(_ mqtt.Client, m mqtt.Message) {
	g.stats.received.Add(1)
	topic, payload := m.Topic(), m.Payload()
	if strings.HasPrefix(topic, "v1/devices/me/") && g.echo.consume(topic, payload) {
		g.stats.echoes.Add(1)
		return
	}
	switch {
	case topic == topicGatewayAttributes:
		g.onAttributeUpdate(payload)
	case topic == topicGatewayRPC:
		g.onRPCRequest(payload)
	case topic == topicGatewayAttrResponse:
		g.onAttributeResponse(payload)
	case topic == topicGatewayDisconnect:
		g.onDisconnectNotice(payload)
	case topic == topicSelfAttributes:
		g.onSelfAttributeUpdate(payload)
	case strings.HasPrefix(topic, topicSelfAttrResponsePrefix):
		g.onSelfAttributeResponse(topic[len(topicSelfAttrResponsePrefix):], payload)
	case strings.HasPrefix(topic, topicSelfRPCRequestPrefix):
		g.onSelfRPCRequest(topic[len(topicSelfRPCRequestPrefix):], payload)
	case strings.HasPrefix(topic, topicSelfRPCResponsePrefix):
		g.onSelfRPCResponse(topic[len(topicSelfRPCResponsePrefix):], payload)
	default:
		g.log.Debug("tbgateway: message on unknown topic ignored", "topic", topic)
	}
}

// malformed counts and logs a message from the server that could not be
// understood; it is dropped and the connection carries on.
func (g *Gateway) malformed(topic string, payload []byte, err error) {
	g.stats.malformed.Add(1)
	g.log.Warn("tbgateway: malformed message from server dropped", "topic", topic, "err", err)
	g.log.Debug("tbgateway: malformed payload", "topic", topic, "payload", string(payload))
}

// echoFilter recognises the gateway's own publishes coming back to it.
// ThingsBoard never echoes, but a plain broker (Mosquitto, mochi) delivers
// a client's publishes on topics it subscribes to; on v1/devices/me/* these
// cannot be told from server messages by their shape, so the filter
// remembers what was sent for a short while and drops one copy of each.
type echoFilter struct {
	mu      sync.Mutex
	entries map[uint64]echoEntry
}

type echoEntry struct {
	count   int
	expires time.Time
}

const (
	echoTTL = 10 * time.Second
	echoCap = 4096
)

func echoHash(topic string, payload []byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(topic))
	h.Write([]byte{0})
	h.Write(payload)
	return h.Sum64()
}

func (f *echoFilter) add(topic string, payload []byte) {
	k := echoHash(topic, payload)
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.entries == nil {
		f.entries = make(map[uint64]echoEntry)
	}
	if len(f.entries) >= echoCap {
		for h, e := range f.entries {
			if now.After(e.expires) || len(f.entries) >= echoCap {
				delete(f.entries, h)
			}
		}
	}
	e := f.entries[k]
	f.entries[k] = echoEntry{count: e.count + 1, expires: now.Add(echoTTL)}
}

func (f *echoFilter) consume(topic string, payload []byte) bool {
	k := echoHash(topic, payload)
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.entries[k]
	if !ok {
		return false
	}
	if e.count <= 1 {
		delete(f.entries, k)
	} else {
		e.count--
		f.entries[k] = e
	}
	return time.Now().Before(e.expires)
}

// Stats is a snapshot of the gateway's counters since Dial.
type Stats struct {
	Queued         int    // records waiting in the outbound queue
	QueuedBytes    int    // their size
	InFlight       int    // messages sent and not yet acknowledged
	Accepted       uint64 // records accepted into the queue
	Published      uint64 // messages handed to the MQTT connection
	Acknowledged   uint64 // messages confirmed (PUBACK at QoS 1, written at QoS 0)
	DataPoints     uint64 // data points in acknowledged messages
	Resent         uint64 // messages re-sent after a reconnect (possible duplicates at the server)
	Restored       uint64 // records loaded from the durable queue at Dial (possible duplicates)
	Refused        uint64 // calls refused because the queue was full (FailFast)
	Dropped        uint64 // records evicted by DropOldest
	Poisoned       uint64 // messages set aside as poison
	Isolated       uint64 // suspected messages taken back to retry their parts alone
	PublishErrors  uint64 // publishes paho refused before sending (re-queued)
	Received       uint64 // messages received from the server
	Malformed      uint64 // received messages that could not be decoded, dropped
	Echoes         uint64 // own publishes a plain broker sent back, ignored
	HandlerDropped uint64 // received messages dropped because a handler queue was full
	HandlerPanics  uint64 // handler panics recovered
	Reconnects     uint64 // successful reconnects after the first connection
	Announced      uint64 // devices announced again after reconnects
	Refreshed      uint64 // quiet devices announced again (WithSessionRefresh)
	LimitsApplied  uint64 // getSessionLimits answers applied
}

type counters struct {
	published, acked, publishErrors, received, malformed, echoes atomic.Uint64
	dropped, panics, reconnects, points, resent                  atomic.Uint64
	restored, refused, droppedOverflow, poisoned, announced      atomic.Uint64
	refreshed, limitsApplied, isolated                           atomic.Uint64
}

// Stats returns the current counters. It never blocks for long.
func (g *Gateway) Stats() Stats {
	s := &g.stats
	q, qb := g.queue.Len()
	return Stats{
		Queued:         q,
		QueuedBytes:    qb,
		InFlight:       g.tracker.Count(),
		Accepted:       g.queue.Added(),
		Published:      s.published.Load(),
		Acknowledged:   s.acked.Load(),
		DataPoints:     s.points.Load(),
		Resent:         s.resent.Load(),
		Restored:       s.restored.Load(),
		Refused:        s.refused.Load(),
		Dropped:        s.droppedOverflow.Load(),
		Poisoned:       s.poisoned.Load(),
		Isolated:       s.isolated.Load(),
		PublishErrors:  s.publishErrors.Load(),
		Received:       s.received.Load(),
		Malformed:      s.malformed.Load(),
		Echoes:         s.echoes.Load(),
		HandlerDropped: s.dropped.Load(),
		HandlerPanics:  s.panics.Load(),
		Reconnects:     s.reconnects.Load(),
		Announced:      s.announced.Load(),
		Refreshed:      s.refreshed.Load(),
		LimitsApplied:  s.limitsApplied.Load(),
	}
}

// requestContext applies the default request timeout to a context without
// a deadline.
func (g *Gateway) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, g.opts.requestTimeout)
}

// newID returns the next id of a gateway attribute request, a positive
// int32 as the server reads ids with getAsInt.
func (g *Gateway) newID() int32 { return nextPositive(&g.nextID) }

// newOwnID returns the next id of the gateway's own requests and calls.
func (g *Gateway) newOwnID() int32 { return nextPositive(&g.nextOwnID) }

func nextPositive(c *atomic.Int32) int32 {
	for {
		id := c.Add(1)
		if id > 0 {
			return id
		}
		c.CompareAndSwap(id, 0)
	}
}

// await waits for a reply registered in a pending table.
func await[V any](ctx context.Context, g *Gateway, ch <-chan pending.Reply[V], cancel func()) (V, error) {
	select {
	case r := <-ch:
		return r.Value, r.Err
	case <-ctx.Done():
		cancel()
		var zero V
		return zero, fmt.Errorf("tbgateway: waiting for reply: %w", ctx.Err())
	case <-g.done:
		cancel()
		var zero V
		return zero, ErrClosed
	}
}
