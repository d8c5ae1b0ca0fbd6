package tbgateway

import "sync"

// handlers holds the application's attribute and RPC handlers, and the
// RPCs whose handler has not answered yet (to drop duplicate deliveries).
type handlers struct {
	mu      sync.RWMutex
	attr    attrHandlers
	rpc     rpcHandlers
	running map[rpcKey]struct{}
}

// forget drops a deleted device's handlers.
func (h *handlers) forget(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.attr.perDevice, name)
	delete(h.rpc.devices, name)
	delete(h.rpc.dMethods, name)
}

// rename moves a renamed device's handlers to its new name.
func (h *handlers) rename(old, renamed string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if x, ok := h.attr.perDevice[old]; ok {
		delete(h.attr.perDevice, old)
		h.attr.perDevice[renamed] = x
	}
	if x, ok := h.rpc.devices[old]; ok {
		delete(h.rpc.devices, old)
		h.rpc.devices[renamed] = x
	}
	if x, ok := h.rpc.dMethods[old]; ok {
		delete(h.rpc.dMethods, old)
		h.rpc.dMethods[renamed] = x
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
