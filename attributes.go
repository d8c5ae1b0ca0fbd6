package tbgateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/outbox"
	"github.com/thingsgate/tbgateway/internal/pending"
)

const (
	topicGatewayAttributes      = "v1/gateway/attributes"
	topicGatewayAttrRequest     = "v1/gateway/attributes/request"
	topicGatewayAttrResponse    = "v1/gateway/attributes/response"
	attributeUpdateDeletedField = "deleted"
)

// Attributes maps device names to client-side attributes, for one message
// that carries attributes of several devices.
type Attributes map[string]Values

// PublishAttributes sends client-side attributes of several devices on
// v1/gateway/attributes. Value rules, splitting, coalescing, blocking and
// offline behaviour are those of Gateway.PublishTelemetry.
func (g *Gateway) PublishAttributes(ctx context.Context, a Attributes) error {
	recs, err := g.attributeRecords(a)
	if err != nil {
		return err
	}
	return g.send(ctx, recs)
}

// PublishAttributesAsync queues attributes without waiting for the
// acknowledgement; see Gateway.PublishTelemetryAsync.
func (g *Gateway) PublishAttributesAsync(ctx context.Context, a Attributes, done func(error)) error {
	recs, err := g.attributeRecords(a)
	if err != nil {
		return err
	}
	return g.enqueue(ctx, recs, done)
}

func (g *Gateway) attributeRecords(a Attributes) ([]*outbox.Record, error) {
	e := getEncoder()
	defer e.release()
	return e.attributeRecords(a, g.limit())
}

// attributeRecords encodes a as one record per device, or more where a
// device's attributes do not fit in one message.
func (e *encoder) attributeRecords(a Attributes, lim sizeLimit) ([]*outbox.Record, error) {
	if len(a) == 0 {
		return nil, fmt.Errorf("%w: no device", ErrNoData)
	}
	e.names = sortedNames(e.names, a)
	recs := make([]*outbox.Record, 0, len(e.names))
	for _, name := range e.names {
		var err error
		if recs, err = e.deviceAttributes(recs, name, "", a[name], lim); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// deviceAttributes appends the records of one device's attributes (quoted
// is its name as a JSON string, or "" to quote it here).
func (e *encoder) deviceAttributes(recs []*outbox.Record, name, quoted string, v Values, lim sizeLimit) ([]*outbox.Record, error) {
	if err := checkDeviceName(name); err != nil {
		return nil, err
	}
	e.buf, e.items = e.buf[:0], e.items[:0]
	if err := e.members(name, v, true); err != nil {
		return nil, err
	}
	if quoted == "" {
		quoted = quotedName(name)
	}
	return e.split(recs, outbox.Attributes, name, quoted, lim)
}

// AttributeKeys names the attributes to request, by scope.
type AttributeKeys struct {
	Client []string // client-side attributes (the device's own)
	Shared []string // shared attributes (set on the server)
}

// AttributeValues holds the attributes found, by scope. Keys that do not
// exist on the server are simply absent; the maps are never nil.
type AttributeValues struct {
	Client Values
	Shared Values
}

type attrKey struct {
	device string
	id     int32
}

type attrReply struct {
	value    any
	hasValue bool
	values   map[string]any
}

// RequestAttributes asks ThingsBoard for a device's client and/or shared
// attributes and returns both sets. The server accepts one scope per
// request, so a call naming both sends two requests (correlated by device
// and id) and merges the replies. It blocks until every reply arrived or
// ctx ends; a ctx without deadline gets the request timeout
// (WithRequestTimeout), because the server sends no reply when the request
// fails on its side. It fails with ErrConnectionLost if the connection
// drops meanwhile. Device(device).RequestAttributes is the same call.
func (g *Gateway) RequestAttributes(ctx context.Context, device string, keys AttributeKeys) (AttributeValues, error) {
	return g.requestAttributes(ctx, device, keys)
}

func (g *Gateway) requestAttributes(ctx context.Context, device string, keys AttributeKeys) (AttributeValues, error) {
	out := AttributeValues{Client: Values{}, Shared: Values{}}
	if err := checkDeviceName(device); err != nil {
		return out, err
	}
	if len(keys.Client) == 0 && len(keys.Shared) == 0 {
		return out, fmt.Errorf("%w: no attribute keys", ErrNoData)
	}
	for _, k := range append(keys.Client[:len(keys.Client):len(keys.Client)], keys.Shared...) {
		if k == "" {
			return out, &ValueError{Device: device, Err: fmt.Errorf("%w: empty attribute key", ErrInvalidKey)}
		}
	}
	ctx, cancel := g.requestContext(ctx)
	defer cancel()

	type scope struct {
		keys   []string
		client bool
		into   Values
	}
	var scopes []scope
	if len(keys.Client) > 0 {
		scopes = append(scopes, scope{keys.Client, true, out.Client})
	}
	if len(keys.Shared) > 0 {
		scopes = append(scopes, scope{keys.Shared, false, out.Shared})
	}
	// Send every request before waiting, so that two scopes cost one round
	// trip.
	type sent struct {
		scope
		key   attrKey
		reply <-chan pending.Reply[attrReply]
	}
	var waits []sent
	defer func() {
		for _, w := range waits {
			g.req.attrReqs.Remove(w.key)
		}
	}()
	for _, sc := range scopes {
		key := attrKey{device, g.newID()}
		ch, _ := g.req.attrReqs.Add(key)
		waits = append(waits, sent{sc, key, ch})
		payload := encodeAttrRequest(key.id, device, sc.client, sc.keys)
		if err := g.publish(ctx, &outbox.Record{Topic: topicGatewayAttrRequest, Body: payload, DeviceName: device}); err != nil {
			return out, err
		}
	}
	for _, w := range waits {
		r, err := await(ctx, g, w.reply, func() { g.req.attrReqs.Remove(w.key) })
		if err != nil {
			return out, fmt.Errorf("tbgateway: attribute request %d for %q: %w", w.key.id, device, err)
		}
		mergeInto(w.into, r.values)
		// A reply to a single-key request carries "value" without the key
		// name: it belongs to the one key that was asked for.
		if r.hasValue && len(w.keys) == 1 {
			w.into[w.keys[0]] = r.value
		}
	}
	return out, nil
}

func mergeInto(dst Values, src map[string]any) {
	for k, v := range src {
		dst[k] = v
	}
}

// encodeAttrRequest builds the one-scope request the server accepts:
// {"id":N,"device":D,"client":bool,"key":K} for one key (the reply then
// carries "value") or "keys":[...] for several.
func encodeAttrRequest(id int32, device string, client bool, keys []string) []byte {
	b := make([]byte, 0, 64+len(device)+16*len(keys))
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, `,"device":`...)
	b = jsonx.AppendString(b, device)
	b = append(b, `,"client":`...)
	b = strconv.AppendBool(b, client)
	if len(keys) == 1 {
		b = append(b, `,"key":`...)
		b = jsonx.AppendString(b, keys[0])
	} else {
		b = append(b, `,"keys":`...)
		b = appendStrings(b, keys)
	}
	return append(b, '}')
}

func appendStrings(b []byte, s []string) []byte {
	b = append(b, '[')
	for i, k := range s {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonx.AppendString(b, k)
	}
	return append(b, ']')
}

// onAttributeResponse correlates {"id","device","value"|"values"} with its
// request. A reply with neither member means nothing was found.
func (g *Gateway) onAttributeResponse(payload []byte) {
	key, r, err := decodeAttributeResponse(payload)
	if err != nil {
		g.malformed(topicGatewayAttrResponse, payload, err)
		return
	}
	if !g.req.attrReqs.Resolve(key, r) {
		g.log.Debug("tbgateway: attribute response nobody waits for", "device", key.device, "request_id", key.id)
	}
}

// decodeAttributeResponse parses {"id":N,"device":D,"value":v} or
// {...,"values":{...}}; neither member means nothing was found.
func decodeAttributeResponse(payload []byte) (attrKey, attrReply, error) {
	var r attrReply
	m, err := jsonx.DecodeObject(payload)
	if err != nil {
		return attrKey{}, r, err
	}
	device, ok1 := m["device"].(string)
	id, ok2 := m["id"].(int64)
	if !ok1 || !ok2 || device == "" || id != int64(int32(id)) {
		return attrKey{}, r, errors.New("missing or invalid device or id")
	}
	r.value, r.hasValue = m["value"]
	if v, ok := m["values"]; ok {
		if r.values, ok = v.(map[string]any); !ok {
			return attrKey{}, r, errors.New("values is not an object")
		}
	}
	return attrKey{device, int32(id)}, r, nil
}

// AttributeUpdate is a change of shared attributes pushed by the server.
type AttributeUpdate struct {
	Device  string   // "" for the gateway's own attributes
	Values  Values   // new or changed attributes; nil when none
	Deleted []string // names of deleted attributes; nil when none
}

// AttributeHandler receives shared-attribute updates. Handlers run one at a
// time, in arrival order, on a goroutine of the gateway, never on the MQTT
// network goroutine; ctx ends when the gateway closes. A panic is
// recovered and counted in Stats.HandlerPanics.
type AttributeHandler interface {
	HandleAttributes(ctx context.Context, u AttributeUpdate)
}

// AttributeHandlerFunc adapts a function to AttributeHandler.
type AttributeHandlerFunc func(ctx context.Context, u AttributeUpdate)

// HandleAttributes calls f.
func (f AttributeHandlerFunc) HandleAttributes(ctx context.Context, u AttributeUpdate) { f(ctx, u) }

// OnAttributeUpdate sets the handler for shared-attribute updates of every
// device behind the gateway that has no handler of its own (nil removes
// it). Updates reach the gateway even before it subscribes, for every
// connected device.
func (g *Gateway) OnAttributeUpdate(h AttributeHandler) { g.hs.setAttr(anyDevice, h) }

// onAttributeUpdate handles v1/gateway/attributes. The server sends
// {"device":D,"data":{...}}; a plain broker also hands back our own
// uplinks, {"D":{...}}, which never have a string "device" with an object
// "data" and are ignored.
func (g *Gateway) onAttributeUpdate(payload []byte) {
	u, echo, err := decodeAttributeUpdate(payload)
	switch {
	case echo:
		g.stats.echoes.Add(1)
	case err != nil:
		g.malformed(topicGatewayAttributes, payload, err)
	default:
		g.deliverUpdate(u, len(payload))
	}
}

// decodeAttributeUpdate parses {"device":D,"data":{...}}. echo reports our
// own uplink shape, {"D":{...}}, which a plain broker hands back.
func decodeAttributeUpdate(payload []byte) (u AttributeUpdate, echo bool, err error) {
	m, err := jsonx.DecodeObject(payload)
	if err != nil {
		return u, false, err
	}
	device, okDevice := m["device"].(string)
	data, okData := m["data"].(map[string]any)
	if !okDevice || !okData || len(m) != 2 {
		if isUplinkShape(m) {
			return u, true, nil
		}
		return u, false, errors.New("not {\"device\",\"data\"}")
	}
	if device == "" {
		return u, false, errors.New("empty device name")
	}
	return splitUpdate(device, data), false, nil
}

// isUplinkShape reports whether m looks like our own {"device":{...}}
// message: every member an object.
func isUplinkShape(m map[string]any) bool {
	for _, v := range m {
		if _, ok := v.(map[string]any); !ok {
			return false
		}
	}
	return len(m) > 0
}

func (g *Gateway) onSelfAttributeUpdate(payload []byte) {
	m, err := jsonx.DecodeObject(payload)
	if err != nil {
		g.malformed(topicSelfAttributes, payload, err)
		return
	}
	g.deliverUpdate(splitUpdate("", m), len(payload))
}

// splitUpdate separates changed and deleted ({"deleted":[...]})
// attributes.
func splitUpdate(device string, data map[string]any) AttributeUpdate {
	u := AttributeUpdate{Device: device}
	if del, ok := data[attributeUpdateDeletedField].([]any); ok {
		names := make([]string, 0, len(del))
		for _, d := range del {
			if s, ok := d.(string); ok {
				names = append(names, s)
			}
		}
		if len(names) > 0 && len(names) == len(del) {
			u.Deleted = names
			delete(data, attributeUpdateDeletedField)
		}
	}
	if len(data) > 0 {
		u.Values = data
	}
	return u
}

// deliverUpdate queues the handler call; size is the payload's, counted
// against the lane's byte bound.
func (g *Gateway) deliverUpdate(u AttributeUpdate, size int) {
	device := u.Device
	g.packagesIn(u, size)
	h := g.hs.attrFor(device)
	if h == nil {
		g.log.Debug("tbgateway: attribute update without handler", "device", device)
		return
	}
	if !g.lanes.updates.Submit(func() { h.HandleAttributes(g.life.ctx, u) }, size) {
		g.stats.handlerDropped.Add(1)
		g.log.Warn("tbgateway: attribute update dropped: handler queue full", "device", device)
	}
}

// packagesIn hands the packages an update assigns to the updater (the
// gateway's own) or to the package handler (a device behind it).
func (g *Gateway) packagesIn(u AttributeUpdate, size int) {
	ps := packages(u)
	if len(ps) == 0 {
		return
	}
	if u.Device == "" {
		if g.hs.upd != nil {
			for _, p := range ps {
				g.hs.upd.assign(p)
			}
		}
		return
	}
	h := g.hs.pkgHandler()
	if h == nil {
		return
	}
	if !g.lanes.updates.Submit(func() {
		for _, p := range ps {
			h.HandlePackage(g.life.ctx, u.Device, p)
		}
	}, size) {
		g.stats.handlerDropped.Add(1)
		g.log.Warn("tbgateway: package assignment dropped: handler queue full", "device", u.Device)
	}
}

// requestOwnAttributes asks for the gateway's own attributes on
// v1/devices/me/attributes/request/{id}. With no keys at all the server
// returns every client and shared attribute.
func (g *Gateway) requestOwnAttributes(ctx context.Context, keys AttributeKeys) (AttributeValues, error) {
	out := AttributeValues{Client: Values{}, Shared: Values{}}
	for _, k := range append(keys.Client[:len(keys.Client):len(keys.Client)], keys.Shared...) {
		if k == "" || strings.Contains(k, ",") {
			return out, &ValueError{Key: k, Err: fmt.Errorf("%w: empty or containing a comma", ErrInvalidKey)}
		}
	}
	ctx, cancel := g.requestContext(ctx)
	defer cancel()
	id := g.newOwnID()
	ch, _ := g.req.selfAttrs.Add(id)
	defer g.req.selfAttrs.Remove(id)
	b := encodeSelfAttrRequest(keys)
	topic := topicSelfAttrRequestPrefix + strconv.Itoa(int(id))
	if err := g.publish(ctx, &outbox.Record{Topic: topic, Body: b}); err != nil {
		return out, err
	}
	raw, err := await(ctx, g, ch, func() { g.req.selfAttrs.Remove(id) })
	if err != nil {
		return out, fmt.Errorf("tbgateway: own attribute request %d: %w", id, err)
	}
	m, err := jsonx.DecodeObject(raw)
	if err != nil {
		return out, fmt.Errorf("%w: %v", ErrMalformedReply, err)
	}
	client, _ := m["client"].(map[string]any)
	shared, _ := m["shared"].(map[string]any)
	mergeInto(out.Client, client)
	mergeInto(out.Shared, shared)
	return out, nil
}

// encodeSelfAttrRequest builds the device API's request:
// {"clientKeys":"a,b","sharedKeys":"c"}, comma-separated strings.
func encodeSelfAttrRequest(keys AttributeKeys) []byte {
	b := make([]byte, 0, 64)
	b = append(b, '{')
	if len(keys.Client) > 0 {
		b = append(b, `"clientKeys":`...)
		b = jsonx.AppendString(b, strings.Join(keys.Client, ","))
	}
	if len(keys.Shared) > 0 {
		if len(keys.Client) > 0 {
			b = append(b, ',')
		}
		b = append(b, `"sharedKeys":`...)
		b = jsonx.AppendString(b, strings.Join(keys.Shared, ","))
	}
	b = append(b, '}')
	return b
}

func (g *Gateway) onSelfAttributeResponse(idText string, payload []byte) {
	id, err := strconv.ParseInt(idText, 10, 32)
	if err != nil {
		g.malformed(topicSelfAttrResponsePrefix+idText, payload, err)
		return
	}
	if !g.req.selfAttrs.Resolve(int32(id), payload) {
		g.log.Debug("tbgateway: own attribute response nobody waits for", "request_id", id)
	}
}
