//! Modbus adapter: TCP, RTU and RTU over TCP devices as fieldgate devices, with merged
//! reads and isolated failures.
