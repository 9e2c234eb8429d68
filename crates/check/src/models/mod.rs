//! Sequential models of the services ostrakon offers.

pub mod etcd_kv;
pub mod keyed_register;
pub mod register;
