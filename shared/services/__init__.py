"""Service layer: each public function is one unit of work over the domain."""
