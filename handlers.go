package tbgateway

import "sync"

// handlers holds the application's attribute and RPC handlers, by device
// ("" is the gateway itself, anyDevice the gateway-wide default for the
// devices behind it), and the RPCs whose handler has not answered yet (to
// drop duplicate deliveries).
type handlers struct {
	mu      sync.RWMutex
	rpc     map[string]RPCHandler
	attr    map[string]AttributeHandler
	pkg     PackageHandler // packages assigned to devices behind the gateway
	running map[rpcKey]struct{}

	upd *updater // WithUpdates: set at Dial, then read only
}

// anyDevice keys the gateway-wide handlers; no device name is empty, so
// none can be this one either.
const anyDevice = "\x00any"

func setHandler[H comparable](m *map[string]H, key string, h H) {
	var none H
	if h == none {
		delete(*m, key)
		return
	}
	if *m == nil {
		*m = make(map[string]H)
	}
	(*m)[key] = h
}

func (h *handlers) setRPC(device string, x RPCHandler) {
	h.mu.Lock()
	defer h.mu.Unlock()
	setHandler(&h.rpc, device, x)
}

func (h *handlers) setAttr(device string, x AttributeHandler) {
	h.mu.Lock()
	defer h.mu.Unlock()
	setHandler(&h.attr, device, x)
}

// lookup resolves a device's handler: its own, else, for a device behind
// the gateway, the gateway-wide one.
func lookup[H comparable](m map[string]H, device string) H {
	if x, ok := m[device]; ok || device == "" {
		return x
	}
	return m[anyDevice]
}

func (h *handlers) rpcFor(device string) RPCHandler {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return lookup(h.rpc, device)
}

func (h *handlers) pkgHandler() PackageHandler {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.pkg
}

func (h *handlers) attrFor(device string) AttributeHandler {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return lookup(h.attr, device)
}

// forget drops a deleted device's handlers.
func (h *handlers) forget(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.attr, name)
	delete(h.rpc, name)
}

// rename moves a renamed device's handlers to its new name.
func (h *handlers) rename(old, renamed string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if x, ok := h.attr[old]; ok {
		delete(h.attr, old)
		h.attr[renamed] = x
	}
	if x, ok := h.rpc[old]; ok {
		delete(h.rpc, old)
		h.rpc[renamed] = x
	}
}

// start marks an RPC running; false if it already is (a duplicate).
func (h *handlers) start(k rpcKey) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.running[k]; dup {
		return false
	}
	if h.running == nil {
		h.running = make(map[rpcKey]struct{})
	}
	h.running[k] = struct{}{}
	return true
}

// finish marks an RPC answered.
func (h *handlers) finish(k rpcKey) {
	h.mu.Lock()
	delete(h.running, k)
	h.mu.Unlock()
}
