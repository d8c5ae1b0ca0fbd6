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
	"github.com/thingsgate/tbgateway/internal/pending"
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

	ready     chan struct{} // closed when the first session is subscribed
	readyOnce sync.Once
	connects  atomic.Int64

	updates *dispatch.Lane // attribute-update handlers, in order
	rpcs    *dispatch.Lane // RPC handlers

	mu      sync.RWMutex
	devices map[string]string // connected device -> profile
	attrH   attrHandlers
	rpcH    rpcHandlers
	running map[rpcKey]struct{} // RPCs whose handler has not answered yet

	nextID    atomic.Int32
	attrReqs  pending.Table[attrKey, attrReply]
	selfAttrs pending.Table[int32, []byte]
	calls     pending.Table[int32, []byte]

	echo  echoFilter
	stats counters
	self  GatewayDevice
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
		opts:    o,
		log:     o.logger,
		done:    make(chan struct{}),
		ready:   make(chan struct{}),
		devices: make(map[string]string),
		running: make(map[rpcKey]struct{}),
	}
	g.self.g = g
	g.ctx, g.cancel = context.WithCancel(context.Background())
	onPanic := func(v any, stack []byte) {
		g.stats.panics.Add(1)
		g.log.Error("tbgateway: handler panicked", "panic", v, "stack", string(stack))
	}
	g.updates = dispatch.NewLane(1, o.handlerQueue, onPanic)
	g.rpcs = dispatch.NewLane(o.rpcWorkers, o.handlerQueue, onPanic)

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
		SetDefaultPublishHandler(g.onMessage).
		SetOnConnectHandler(g.onConnect).
		SetConnectionLostHandler(g.onConnectionLost)
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
		return nil, err
	}
	tok := g.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fail(fmt.Errorf("tbgateway: dial %s: %w", u.Redacted(), ctx.Err()))
	}
	if err := tok.Error(); err != nil {
		if ct, ok := tok.(*mqtt.ConnectToken); ok && ct.ReturnCode() >= 1 && ct.ReturnCode() <= 5 {
			return fail(&ConnectError{Code: ct.ReturnCode(), Err: err})
		}
		return fail(fmt.Errorf("tbgateway: dial %s: %w", u.Redacted(), err))
	}
	select {
	case <-g.ready:
	case <-ctx.Done():
		return fail(fmt.Errorf("tbgateway: dial %s: %w", u.Redacted(), ctx.Err()))
	}
	g.log.Info("tbgateway: connected", "broker", u.Redacted(), "client_id", o.clientID)
	return g, nil
}

// Close ends the session: handlers are told to stop through their
// contexts, pending requests fail with ErrClosed, and the MQTT connection is
// closed cleanly. It waits for running handlers until ctx ends. Every call
// made after Close returns ErrClosed. Close is idempotent.
func (g *Gateway) Close(ctx context.Context) error {
	first := false
	g.once.Do(func() {
		first = true
		close(g.done)
	})
	if !first {
		return nil
	}
	g.client.Disconnect(250)
	g.shutdown()
	select {
	case <-g.updates.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-g.rpcs.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	g.log.Info("tbgateway: closed")
	return nil
}

func (g *Gateway) shutdown() {
	g.cancel()
	g.updates.Close()
	g.rpcs.Close()
	g.failPending(ErrClosed)
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

func (g *Gateway) onConnect(c mqtt.Client) {
	if g.closed() {
		return
	}
	n := g.connects.Add(1)
	if n > 1 {
		g.stats.reconnects.Add(1)
		g.log.Info("tbgateway: reconnected", "connects", n)
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
	if n > 1 {
		g.reannounce()
	}
	g.readyOnce.Do(func() { close(g.ready) })
}

// reannounce sends v1/gateway/connect again for every connected device:
// ThingsBoard forgets all sub-device sessions with the connection, and a
// device it does not know of gets no RPC or attribute updates.
func (g *Gateway) reannounce() {
	g.mu.RLock()
	devs := make(map[string]string, len(g.devices))
	for d, p := range g.devices {
		devs[d] = p
	}
	g.mu.RUnlock()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for name, profile := range devs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(g.ctx, g.opts.requestTimeout)
			defer cancel()
			if err := g.publish(ctx, topicGatewayConnect, encodeConnect(name, profile)); err != nil {
				g.log.Warn("tbgateway: re-announcing device failed", "device", name, "err", err)
			}
		}()
	}
	wg.Wait()
}

func (g *Gateway) onConnectionLost(_ mqtt.Client, err error) {
	g.log.Warn("tbgateway: connection lost", "err", err)
	g.failPending(ErrConnectionLost)
}

func (g *Gateway) failPending(err error) {
	g.attrReqs.FailAll(err)
	g.selfAttrs.FailAll(err)
	g.calls.FailAll(err)
}

// publish is the one outbound path: every message the SDK sends goes
// through it. It checks the size limit as ThingsBoard counts it, then waits
// for the PUBACK (QoS 1) or the write (QoS 0).
func (g *Gateway) publish(ctx context.Context, topic string, payload []byte) error {
	if g.closed() {
		return ErrClosed
	}
	if n := remainingLength(topic, len(payload), g.opts.qos); n > g.opts.maxPayloadSize {
		return &PayloadTooLargeError{Topic: topic, Size: n, Limit: g.opts.maxPayloadSize}
	}
	if !g.client.IsConnectionOpen() {
		return ErrNotConnected
	}
	if strings.HasPrefix(topic, "v1/devices/me/") {
		g.echo.add(topic, payload)
	}
	g.log.Debug("tbgateway: publish", "topic", topic, "payload", string(payload))
	tok := g.client.Publish(topic, g.opts.qos, false, payload)
	g.stats.published.Add(1)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			g.stats.publishErrors.Add(1)
			if errors.Is(err, mqtt.ErrNotConnected) {
				return ErrNotConnected
			}
			return fmt.Errorf("tbgateway: publish %s: %w", topic, err)
		}
		g.stats.acked.Add(1)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tbgateway: publish %s: %w", topic, ctx.Err())
	case <-g.done:
		return ErrClosed
	}
}

// remainingLength is the MQTT remaining length of a PUBLISH, which is what
// ThingsBoard compares with its maximum payload size.
func remainingLength(topic string, payload int, qos byte) int {
	n := 2 + len(topic) + payload
	if qos > 0 {
		n += 2
	}
	return n
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
	Published      uint64 // messages handed to the MQTT connection
	Acknowledged   uint64 // publishes confirmed (PUBACK at QoS 1, written at QoS 0)
	PublishErrors  uint64 // publishes that failed after being handed over
	Received       uint64 // messages received from the server
	Malformed      uint64 // received messages that could not be decoded, dropped
	Echoes         uint64 // own publishes a plain broker sent back, ignored
	HandlerDropped uint64 // received messages dropped because a handler queue was full
	HandlerPanics  uint64 // handler panics recovered
	Reconnects     uint64 // successful reconnects after the first connection
}

type counters struct {
	published, acked, publishErrors, received, malformed, echoes atomic.Uint64
	dropped, panics, reconnects                                  atomic.Uint64
}

// Stats returns the current counters. It never blocks.
func (g *Gateway) Stats() Stats {
	s := &g.stats
	return Stats{
		Published:      s.published.Load(),
		Acknowledged:   s.acked.Load(),
		PublishErrors:  s.publishErrors.Load(),
		Received:       s.received.Load(),
		Malformed:      s.malformed.Load(),
		Echoes:         s.echoes.Load(),
		HandlerDropped: s.dropped.Load(),
		HandlerPanics:  s.panics.Load(),
		Reconnects:     s.reconnects.Load(),
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

// newID returns the next request id, a positive int32 as the server reads
// ids with getAsInt.
func (g *Gateway) newID() int32 {
	for {
		id := g.nextID.Add(1)
		if id > 0 {
			return id
		}
		g.nextID.CompareAndSwap(id, 0)
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
