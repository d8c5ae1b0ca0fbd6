package tbgateway

import (
	"context"

	"github.com/thingsgate/tbgateway/internal/outbox"
)

// handle is the verb set that Device (a device behind the gateway) and
// GatewayDevice (the gateway's own device API) share. Each verb is
// written once, here; only the records it builds differ between the two
// topic families (v1/gateway/* with the device's name, v1/devices/me/*).
type handle struct {
	g      *Gateway
	name   string // "" for the gateway itself
	quoted string // name as a JSON string, quoted once for all its calls
}

func (h *handle) own() bool { return h.name == "" }

// current returns the device's name now (ThingsBoard may have renamed
// it) and its quoted form, "" when it must be quoted anew.
func (h *handle) current() (name, quoted string) {
	name = h.g.reg.current(h.name)
	if name != h.name {
		return name, ""
	}
	return name, h.quoted
}

// PublishTelemetry sends entries and waits until the server acknowledged
// them (QoS 1) or ctx ends; see Gateway.PublishTelemetry for the value
// rules, splitting, coalescing and what happens offline.
func (h *handle) PublishTelemetry(ctx context.Context, entries ...Entry) error {
	recs, err := h.telemetry(entries)
	if err != nil {
		return err
	}
	return h.g.send(ctx, recs)
}

// PublishTelemetryAsync queues entries and returns once they are
// accepted; done, if not nil, gets the outcome. See
// Gateway.PublishTelemetryAsync.
func (h *handle) PublishTelemetryAsync(ctx context.Context, entries []Entry, done func(error)) error {
	recs, err := h.telemetry(entries)
	if err != nil {
		return err
	}
	return h.g.enqueue(ctx, recs, done)
}

// PublishAttributes sends client-side attributes and waits like
// PublishTelemetry.
func (h *handle) PublishAttributes(ctx context.Context, v Values) error {
	recs, err := h.attributes(v)
	if err != nil {
		return err
	}
	return h.g.send(ctx, recs)
}

// PublishAttributesAsync queues client-side attributes like
// PublishTelemetryAsync.
func (h *handle) PublishAttributesAsync(ctx context.Context, v Values, done func(error)) error {
	recs, err := h.attributes(v)
	if err != nil {
		return err
	}
	return h.g.enqueue(ctx, recs, done)
}

// RequestAttributes asks the server for client and/or shared attributes
// and returns both sets; see Gateway.RequestAttributes. For the gateway
// itself no keys at all asks for every attribute, and keys must not
// contain commas (the device API sends comma-separated lists).
func (h *handle) RequestAttributes(ctx context.Context, keys AttributeKeys) (AttributeValues, error) {
	if h.own() {
		return h.g.requestOwnAttributes(ctx, keys)
	}
	name, _ := h.current()
	return h.g.requestAttributes(ctx, name, keys)
}

// Claim opens a claiming window (see ClaimRequest). The server answers
// only with the PUBACK; it blocks until then or ctx ends.
func (h *handle) Claim(ctx context.Context, c ClaimRequest) error {
	recs, err := h.claim(c)
	if err != nil {
		return err
	}
	return h.g.send(ctx, recs)
}

// OnRPC sets the handler for RPCs from the server to this device (nil
// removes it); for a device behind the gateway it takes precedence over
// Gateway.OnRPC. An RPCMux routes by method.
func (h *handle) OnRPC(x RPCHandler) { h.g.hs.setRPC(h.name, x) }

// OnAttributeUpdate sets the handler for this device's shared-attribute
// updates (nil removes it); for a device behind the gateway it takes
// precedence over Gateway.OnAttributeUpdate.
func (h *handle) OnAttributeUpdate(x AttributeHandler) { h.g.hs.setAttr(h.name, x) }

// telemetry encodes entries as the records of one call.
func (h *handle) telemetry(entries []Entry) ([]*outbox.Record, error) {
	e := getEncoder()
	defer e.release()
	if h.own() {
		if err := e.selfTelemetry(entries); err != nil {
			return nil, err
		}
		points := 0
		for i := range entries {
			points += entries[i].points()
		}
		return h.g.out.whole(&outbox.Record{Topic: topicSelfTelemetry, Body: e.payload(), Points: points})
	}
	name, quoted := h.current()
	return e.deviceRecords(nil, name, quoted, entries, h.g.limit())
}

// attributes encodes client-side attributes as the records of one call.
func (h *handle) attributes(v Values) ([]*outbox.Record, error) {
	e := getEncoder()
	defer e.release()
	if h.own() {
		if err := e.values("", v); err != nil {
			return nil, err
		}
		return h.g.out.whole(&outbox.Record{Topic: topicSelfAttributes, Body: e.payload(), Points: len(v)})
	}
	name, quoted := h.current()
	return e.deviceAttributes(nil, name, quoted, v, h.g.limit())
}

// claim encodes a claim as the record of one call.
func (h *handle) claim(c ClaimRequest) ([]*outbox.Record, error) {
	if h.own() {
		b, err := appendClaim(nil, "", c)
		if err != nil {
			return nil, err
		}
		return h.g.out.whole(&outbox.Record{Topic: topicSelfClaim, Body: b})
	}
	name, _ := h.current()
	return h.g.claimRecords(map[string]ClaimRequest{name: c})
}
